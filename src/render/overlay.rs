//! Face overlays on the camera view: boxes, landmark dots and lines, drawn on the GPU as
//! coloured triangles in frame-pixel coordinates.

use glam::Vec2;
use wgpu::util::DeviceExt;

use super::PixelRect;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Vertex {
    position: [f32; 2],
    color: [f32; 4],
}

/// Collects shapes for one frame, then draws them over the frame view.
pub struct Overlay {
    pipeline: wgpu::RenderPipeline,
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    vertices: Vec<Vertex>,
    buffer: Option<(wgpu::Buffer, u32)>,
}

impl Overlay {
    pub fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> Overlay {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("overlay.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/overlay.wgsl").into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("overlay"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("overlay uniforms"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("overlay"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: uniforms.as_entire_binding(),
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("overlay"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("overlay"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[Some(wgpu::VertexBufferLayout {
                    array_stride: std::mem::size_of::<Vertex>() as u64,
                    step_mode: wgpu::VertexStepMode::Vertex,
                    attributes: &wgpu::vertex_attr_array![0 => Float32x2, 1 => Float32x4],
                })],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: target_format,
                    blend: Some(wgpu::BlendState::ALPHA_BLENDING),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        Overlay {
            pipeline,
            uniforms,
            bind_group,
            vertices: Vec::new(),
            buffer: None,
        }
    }

    pub fn clear(&mut self) {
        self.vertices.clear();
    }

    /// A filled quad with corners a, b, c, d (in order around it).
    fn quad(&mut self, [a, b, c, d]: [Vec2; 4], color: [f32; 4]) {
        for p in [a, b, c, a, c, d] {
            self.vertices.push(Vertex {
                position: p.to_array(),
                color,
            });
        }
    }

    /// A line segment `thickness` frame pixels wide.
    pub fn line(&mut self, a: Vec2, b: Vec2, thickness: f32, color: [f32; 4]) {
        let along = (b - a).normalize_or_zero();
        if along == Vec2::ZERO {
            return;
        }
        let side = along.perp() * (thickness / 2.0);
        self.quad([a - side, b - side, b + side, a + side], color);
    }

    /// A square dot centred on `p`.
    pub fn point(&mut self, p: Vec2, size: f32, color: [f32; 4]) {
        let h = size / 2.0;
        self.quad(
            [
                p + Vec2::new(-h, -h),
                p + Vec2::new(h, -h),
                p + Vec2::new(h, h),
                p + Vec2::new(-h, h),
            ],
            color,
        );
    }

    /// The outline of an axis-aligned box.
    pub fn rect(&mut self, min: Vec2, max: Vec2, thickness: f32, color: [f32; 4]) {
        let (tl, tr, br, bl) = (min, Vec2::new(max.x, min.y), max, Vec2::new(min.x, max.y));
        for (a, b) in [(tl, tr), (tr, br), (br, bl), (bl, tl)] {
            self.line(a, b, thickness, color);
        }
    }

    /// Uploads this frame's shapes; `frame_size` maps frame pixels onto the view.
    pub fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, frame_size: (u32, u32)) {
        let uniforms = [
            frame_size.0.max(1) as f32,
            frame_size.1.max(1) as f32,
            0.0,
            0.0,
        ];
        queue.write_buffer(&self.uniforms, 0, bytemuck::cast_slice(&uniforms));
        self.buffer = (!self.vertices.is_empty()).then(|| {
            let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("overlay vertices"),
                contents: bytemuck::cast_slice(&self.vertices),
                usage: wgpu::BufferUsages::VERTEX,
            });
            (buffer, self.vertices.len() as u32)
        });
    }

    /// Draws into `rect`, the rectangle the frame occupies (as returned by `FrameView::draw`).
    pub fn draw(&self, pass: &mut wgpu::RenderPass<'_>, rect: PixelRect) {
        let Some((buffer, count)) = &self.buffer else {
            return;
        };
        pass.set_viewport(rect.x, rect.y, rect.width, rect.height, 0.0, 1.0);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_vertex_buffer(0, buffer.slice(..));
        pass.draw(0..*count, 0..1);
    }
}
