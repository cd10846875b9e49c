// Depthwise 3x3 convolution (padding 1, stride 1 or 2) with bias and activation fused: one thread
// per output value. candle's grouped convolution launches one convolution per channel on the GPU
// (~100x slower, ../shared/gpu/README.md); this is the CUDA twin of ops.rs's CPU kernel.
// Built to PTX by build.rs when the `cuda` feature is on.

extern "C" __global__ void depthwise3x3_f32(
    const float* __restrict__ input,   // [n, c, h, w], contiguous
    const float* __restrict__ weight,  // [c, 1, 3, 3]
    const float* __restrict__ bias,    // [c]
    float* __restrict__ output,        // [n, c, ho, wo]
    int n, int c, int h, int w, int ho, int wo, int stride,
    int activation                     // 0 none, 1 relu, 2 relu6
) {
    const long long total = (long long)n * c * ho * wo;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int ox = (int)(i % wo);
        const int oy = (int)((i / wo) % ho);
        const long long plane = i / ((long long)wo * ho);
        const int ch = (int)(plane % c);
        const float* src = input + plane * h * w;
        const float* k = weight + ch * 9;
        float sum = bias[ch];
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
            const int iy = oy * stride + ky - 1;
            if (iy < 0 || iy >= h) continue;
#pragma unroll
            for (int kx = 0; kx < 3; ++kx) {
                const int ix = ox * stride + kx - 1;
                if (ix < 0 || ix >= w) continue;
                sum += k[ky * 3 + kx] * src[iy * w + ix];
            }
        }
        if (activation == 1) sum = fmaxf(sum, 0.0f);
        else if (activation == 2) sum = fminf(fmaxf(sum, 0.0f), 6.0f);
        output[i] = sum;
    }
}
