// Blendshape avatars: morph targets blended in the vertex shader from a storage buffer of
// position deltas (only the active targets are visited), the head turned about its pivot by a
// per-vertex head weight, and a soft toon look under a shadow-free three-point light.
// Colours are linear; the target is sRGB, so the hardware encodes on write.
// The fragment stage never branches on uniforms: the material's switches reach it as flat
// varyings. When its branches read material uniforms, Mesa 22.3's lavapipe compiled the fragment
// shader again at draw time and kept every copy (+36 MB per redraw of three avatars).

struct Camera {
    view_proj: mat4x4<f32>,
    eye: vec4<f32>,
};
@group(0) @binding(0) var<uniform> camera: Camera;

struct Instance {
    model: mat4x4<f32>,
    // rotation about the head pivot, avatar space
    head: mat4x4<f32>,
};
@group(1) @binding(0) var<uniform> instance: Instance;

struct MeshParams {
    base_color: vec4<f32>,
    // x: vertex count, y: active targets, z: has texture, w: alpha mode (0 opaque, 1 mask, 2 blend)
    info: vec4<u32>,
    // x: alpha cutoff
    cutoff: vec4<f32>,
    // (target, weight) pairs, two per vec4
    morphs: array<vec4<f32>, 32>,
};
@group(2) @binding(0) var<uniform> mesh: MeshParams;
@group(2) @binding(1) var<storage, read> deltas: array<vec4<f32>>;
@group(2) @binding(2) var base_texture: texture_2d<f32>;
@group(2) @binding(3) var base_sampler: sampler;

struct VsIn {
    @builtin(vertex_index) vertex: u32,
    @location(0) position: vec3<f32>,
    @location(1) normal: vec3<f32>,
    @location(2) uv: vec2<f32>,
    @location(3) head_weight: f32,
};

struct VsOut {
    @builtin(position) clip: vec4<f32>,
    @location(0) world: vec3<f32>,
    @location(1) normal: vec3<f32>,
    @location(2) uv: vec2<f32>,
    // x: alpha cutoff (-1 unless the material is masked), y: 1 when textured
    @location(3) @interpolate(flat) material: vec2<f32>,
};

@vertex
fn vs_main(in: VsIn) -> VsOut {
    var p = in.position;
    let vertices = mesh.info.x;
    for (var i = 0u; i < mesh.info.y; i = i + 1u) {
        let pair = mesh.morphs[i / 2u];
        var morph_index = pair.x;
        var weight = pair.y;
        if (i % 2u == 1u) {
            morph_index = pair.z;
            weight = pair.w;
        }
        p = p + weight * deltas[u32(morph_index) * vertices + in.vertex].xyz;
    }
    let turned = (instance.head * vec4<f32>(p, 1.0)).xyz;
    let posed = mix(p, turned, in.head_weight);
    let turned_normal = (instance.head * vec4<f32>(in.normal, 0.0)).xyz;
    let normal = mix(in.normal, turned_normal, in.head_weight);
    let world = instance.model * vec4<f32>(posed, 1.0);
    var out: VsOut;
    out.clip = camera.view_proj * world;
    out.world = world.xyz;
    out.normal = (instance.model * vec4<f32>(normal, 0.0)).xyz;
    out.uv = in.uv;
    out.material = vec2<f32>(select(-1.0, mesh.cutoff.x, mesh.info.w == 1u), f32(mesh.info.z));
    return out;
}

@fragment
fn fs_main(in: VsOut, @builtin(front_facing) front: bool) -> @location(0) vec4<f32> {
    var base = mesh.base_color;
    if (in.material.y > 0.5) {
        // avatar textures have one mip level: level 0 is what textureSample would read
        base = base * textureSampleLevel(base_texture, base_sampler, in.uv, 0.0);
    }
    if (base.a < in.material.x) {
        discard;
    }
    var n = normalize(in.normal);
    if (!front) {
        n = -n;
    }
    let v = normalize(camera.eye.xyz - in.world);
    let key_dir = normalize(vec3<f32>(-0.45, 0.55, 0.75));
    let fill_dir = normalize(vec3<f32>(0.7, 0.05, 0.6));
    let rim_dir = normalize(vec3<f32>(0.2, 0.6, -0.8));
    let nk = dot(n, key_dir);
    // a soft two-tone band plus a little smooth shading: toon, but not flat
    let key = 0.5 * smoothstep(-0.1, 0.2, nk) + 0.35 * max(nk, 0.0);
    let fill = 0.22 * max(dot(n, fill_dir), 0.0);
    let fresnel = pow(1.0 - max(dot(n, v), 0.0), 3.0);
    let rim = 0.45 * fresnel * max(dot(n, rim_dir) + 0.4, 0.0);
    let h = normalize(key_dir + v);
    let spec = 0.10 * pow(max(dot(n, h), 0.0), 48.0);
    let ambient = 0.20;
    let lit = base.rgb * (ambient + key * vec3<f32>(1.0, 0.96, 0.9) + fill * vec3<f32>(0.8, 0.88, 1.0))
        + (rim + spec) * vec3<f32>(1.0, 1.0, 1.0);
    return vec4<f32>(lit, base.a);
}
