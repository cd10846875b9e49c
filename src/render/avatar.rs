//! Avatars on the GPU: each primitive's vertices and its morph-target deltas (a storage buffer
//! the vertex shader reads for the active targets only), per-avatar head pose and placement,
//! MSAA + depth, drawn into an offscreen sRGB texture that the app shows as an image and tests
//! read back. Several avatars share one view, laid out side by side. An avatar file is uploaded
//! once ([`GpuMesh`]); each person wearing it adds only their pose buffers ([`GpuAvatar`]).

use std::sync::Arc;

use glam::{Mat4, Quat, Vec3};
use wgpu::util::DeviceExt;

use super::OffscreenTarget;
use crate::avatar::{AlphaMode, Avatar};

/// Active morph targets per primitive the shader visits (the rest are dropped, smallest first).
pub const MAX_ACTIVE_TARGETS: usize = 64;
const SAMPLE_COUNT: u32 = 4;
const DEPTH_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Depth32Float;
const BACKGROUND: wgpu::Color = wgpu::Color {
    r: 0.045,
    g: 0.05,
    b: 0.06,
    a: 1.0,
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Vertex {
    position: [f32; 3],
    normal: [f32; 3],
    uv: [f32; 2],
    head_weight: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CameraUniform {
    view_proj: [[f32; 4]; 4],
    eye: [f32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct InstanceUniform {
    model: [[f32; 4]; 4],
    head: [[f32; 4]; 4],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MeshUniform {
    base_color: [f32; 4],
    info: [u32; 4],
    cutoff: [f32; 4],
    active: [[f32; 4]; MAX_ACTIVE_TARGETS / 2],
}

/// What an avatar does this frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AvatarPose {
    /// One weight per [`Avatar::morph_names`] (missing entries count as 0).
    pub morph_weights: Vec<f32>,
    /// Head rotation in avatar space (about the head pivot).
    pub head: Quat,
}

/// Orbit camera around the stage: angles in degrees, `zoom` > 1 moves closer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Orbit {
    pub yaw: f32,
    pub pitch: f32,
    pub zoom: f32,
}

impl Default for Orbit {
    fn default() -> Self {
        Orbit {
            yaw: 0.0,
            pitch: 0.0,
            zoom: 1.0,
        }
    }
}

/// One primitive's geometry and material on the GPU, shared by everyone wearing the avatar.
struct MeshPrimitive {
    vertices: wgpu::Buffer,
    indices: wgpu::Buffer,
    index_count: u32,
    deltas: wgpu::Buffer,
    texture: Option<wgpu::TextureView>,
    uniform: MeshUniform,
    /// Global morph index of each local target (the deltas buffer's order).
    targets: Vec<usize>,
    blend: bool,
}

/// An avatar file's geometry, morph deltas and textures on the GPU: uploaded once and shared
/// (through [`Arc`]) by every person who wears it.
pub struct GpuMesh {
    primitives: Vec<MeshPrimitive>,
    pub morph_names: Vec<String>,
    pub name: String,
    head_pivot: Vec3,
    /// Region the stage frames: the head and a little below it.
    focus: (Vec3, Vec3),
}

impl GpuMesh {
    /// Bytes of GPU memory the geometry, deltas and textures take.
    pub fn gpu_bytes(&self) -> u64 {
        self.primitives
            .iter()
            .map(|p| p.vertices.size() + p.indices.size() + p.deltas.size())
            .sum()
    }
}

/// What one person's copy of a [`GpuMesh`] owns: the pose uniforms (head, active morph
/// weights per primitive), a few hundred bytes each.
struct PosePrimitive {
    params: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

/// One person's avatar: a shared [`GpuMesh`] plus this person's pose buffers.
pub struct GpuAvatar {
    pub mesh: Arc<GpuMesh>,
    primitives: Vec<PosePrimitive>,
    instance: wgpu::Buffer,
    instance_bind_group: wgpu::BindGroup,
}

/// Pipelines and layouts shared by every avatar.
pub struct AvatarRenderer {
    opaque: wgpu::RenderPipeline,
    blended: wgpu::RenderPipeline,
    camera_layout: wgpu::BindGroupLayout,
    instance_layout: wgpu::BindGroupLayout,
    mesh_layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    white: wgpu::TextureView,
}

fn uniform_entry(binding: u32, visibility: wgpu::ShaderStages) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn rgba_texture(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    image: &image::RgbaImage,
) -> wgpu::TextureView {
    let size = wgpu::Extent3d {
        width: image.width().max(1),
        height: image.height().max(1),
        depth_or_array_layers: 1,
    };
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("avatar texture"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8UnormSrgb,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        texture.as_image_copy(),
        image.as_raw(),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * image.width()),
            rows_per_image: Some(image.height()),
        },
        size,
    );
    texture.create_view(&Default::default())
}

impl AvatarRenderer {
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        color_format: wgpu::TextureFormat,
    ) -> AvatarRenderer {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("avatar.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/avatar.wgsl").into()),
        });
        let vs_fs = wgpu::ShaderStages::VERTEX_FRAGMENT;
        let camera_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("avatar camera"),
            entries: &[uniform_entry(0, vs_fs)],
        });
        let instance_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("avatar instance"),
            entries: &[uniform_entry(0, wgpu::ShaderStages::VERTEX)],
        });
        let mesh_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("avatar mesh"),
            entries: &[
                uniform_entry(0, vs_fs),
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::VERTEX,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: true },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("avatar"),
            bind_group_layouts: &[
                Some(&camera_layout),
                Some(&instance_layout),
                Some(&mesh_layout),
            ],
            immediate_size: 0,
        });
        let pipeline = |blend: bool| {
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some(if blend { "avatar blended" } else { "avatar opaque" }),
                layout: Some(&layout),
                vertex: wgpu::VertexState {
                    module: &shader,
                    entry_point: Some("vs_main"),
                    compilation_options: Default::default(),
                    buffers: &[Some(wgpu::VertexBufferLayout {
                        array_stride: std::mem::size_of::<Vertex>() as u64,
                        step_mode: wgpu::VertexStepMode::Vertex,
                        attributes: &wgpu::vertex_attr_array![0 => Float32x3, 1 => Float32x3, 2 => Float32x2, 3 => Float32],
                    })],
                },
                fragment: Some(wgpu::FragmentState {
                    module: &shader,
                    entry_point: Some("fs_main"),
                    compilation_options: Default::default(),
                    targets: &[Some(wgpu::ColorTargetState {
                        format: color_format,
                        blend: blend.then_some(wgpu::BlendState::ALPHA_BLENDING),
                        write_mask: wgpu::ColorWrites::ALL,
                    })],
                }),
                // avatars are often authored single-sided with mixed winding: draw both sides
                primitive: wgpu::PrimitiveState::default(),
                depth_stencil: Some(wgpu::DepthStencilState {
                    format: DEPTH_FORMAT,
                    depth_write_enabled: Some(!blend),
                    depth_compare: Some(wgpu::CompareFunction::LessEqual),
                    stencil: Default::default(),
                    bias: Default::default(),
                }),
                multisample: wgpu::MultisampleState {
                    count: SAMPLE_COUNT,
                    ..Default::default()
                },
                multiview_mask: None,
                cache: None,
            })
        };
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("avatar"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            address_mode_u: wgpu::AddressMode::Repeat,
            address_mode_v: wgpu::AddressMode::Repeat,
            ..Default::default()
        });
        let white = rgba_texture(
            device,
            queue,
            &image::RgbaImage::from_pixel(1, 1, image::Rgba([255; 4])),
        );
        AvatarRenderer {
            opaque: pipeline(false),
            blended: pipeline(true),
            camera_layout,
            instance_layout,
            mesh_layout,
            sampler,
            white,
        }
    }

    /// Uploads `avatar`'s geometry, morph deltas and textures, to be shared by every person
    /// who wears it ([`AvatarRenderer::instantiate`]).
    pub fn upload_mesh(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        avatar: &Avatar,
    ) -> Arc<GpuMesh> {
        let mut primitives = Vec::with_capacity(avatar.primitives.len());
        for p in &avatar.primitives {
            let vertices: Vec<Vertex> = (0..p.positions.len())
                .map(|i| Vertex {
                    position: p.positions[i],
                    normal: p.normals.get(i).copied().unwrap_or([0.0, 1.0, 0.0]),
                    uv: p.uvs.get(i).copied().unwrap_or([0.0; 2]),
                    head_weight: p.head_weight.get(i).copied().unwrap_or(1.0),
                })
                .collect();
            let mut deltas: Vec<[f32; 4]> = Vec::with_capacity(p.targets.len() * vertices.len());
            for t in &p.targets {
                deltas.extend(t.position_deltas.iter().map(|d| [d[0], d[1], d[2], 0.0]));
            }
            if deltas.is_empty() {
                deltas.push([0.0; 4]);
            }
            let vertex_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("avatar vertices"),
                contents: bytemuck::cast_slice(&vertices),
                usage: wgpu::BufferUsages::VERTEX,
            });
            let index_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("avatar indices"),
                contents: bytemuck::cast_slice(&p.indices),
                usage: wgpu::BufferUsages::INDEX,
            });
            let delta_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("avatar morph deltas"),
                contents: bytemuck::cast_slice(&deltas),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let uniform = MeshUniform {
                base_color: p.base_color,
                info: [
                    vertices.len() as u32,
                    0,
                    p.texture.is_some() as u32,
                    match p.alpha {
                        AlphaMode::Opaque => 0,
                        AlphaMode::Mask(_) => 1,
                        AlphaMode::Blend => 2,
                    },
                ],
                cutoff: [
                    match p.alpha {
                        AlphaMode::Mask(c) => c,
                        _ => 0.0,
                    },
                    0.0,
                    0.0,
                    0.0,
                ],
                active: [[0.0; 4]; MAX_ACTIVE_TARGETS / 2],
            };
            primitives.push(MeshPrimitive {
                vertices: vertex_buffer,
                indices: index_buffer,
                index_count: p.indices.len() as u32,
                deltas: delta_buffer,
                texture: p.texture.as_ref().map(|t| rgba_texture(device, queue, t)),
                uniform,
                targets: p.targets.iter().map(|t| t.morph).collect(),
                blend: p.alpha == AlphaMode::Blend,
            });
        }
        // frame the head and a bit of what is below it (neck, shoulders)
        let (lo, hi) = avatar.head_bounds;
        let height = (hi.y - lo.y).max(1e-4);
        let focus = (Vec3::new(lo.x, lo.y - 0.45 * height, lo.z), hi);
        Arc::new(GpuMesh {
            primitives,
            morph_names: avatar.morph_names.clone(),
            name: avatar.name.clone(),
            head_pivot: avatar.head_pivot,
            focus,
        })
    }

    /// A person's avatar wearing `mesh`: only the pose buffers are new.
    pub fn instantiate(&self, device: &wgpu::Device, mesh: &Arc<GpuMesh>) -> GpuAvatar {
        let primitives = mesh
            .primitives
            .iter()
            .map(|p| {
                let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("avatar mesh params"),
                    contents: bytemuck::bytes_of(&p.uniform),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                });
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("avatar mesh"),
                    layout: &self.mesh_layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: params.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: p.deltas.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: wgpu::BindingResource::TextureView(
                                p.texture.as_ref().unwrap_or(&self.white),
                            ),
                        },
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: wgpu::BindingResource::Sampler(&self.sampler),
                        },
                    ],
                });
                PosePrimitive { params, bind_group }
            })
            .collect();
        let instance = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("avatar instance"),
            size: std::mem::size_of::<InstanceUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let instance_bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("avatar instance"),
            layout: &self.instance_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: instance.as_entire_binding(),
            }],
        });
        GpuAvatar {
            mesh: Arc::clone(mesh),
            primitives,
            instance,
            instance_bind_group,
        }
    }

    /// Uploads `avatar` for one person (its own mesh and pose buffers).
    pub fn upload(&self, device: &wgpu::Device, queue: &wgpu::Queue, avatar: &Avatar) -> GpuAvatar {
        self.instantiate(device, &self.upload_mesh(device, queue, avatar))
    }
}

/// Where each of `count` avatars stands: slot centres on a grid, and the grid's size.
fn slots(count: usize, aspect: f32) -> (Vec<Vec3>, f32, f32) {
    const SLOT_W: f32 = 0.42;
    const SLOT_H: f32 = 0.52;
    let count = count.max(1);
    let mut columns = 1;
    // the most columns whose grid still uses the view's shape best
    while columns < count {
        let rows = count.div_ceil(columns);
        let next_rows = count.div_ceil(columns + 1);
        let fit = |c: usize, r: usize| (c as f32 * SLOT_W / aspect).max(r as f32 * SLOT_H);
        if fit(columns + 1, next_rows) < fit(columns, rows) {
            columns += 1;
        } else {
            break;
        }
    }
    let rows = count.div_ceil(columns);
    let mut centres = Vec::with_capacity(count);
    for i in 0..count {
        let (c, r) = (i % columns, i / columns);
        let in_row = if r + 1 == rows {
            count - r * columns
        } else {
            columns
        };
        let x = (c as f32 - (in_row as f32 - 1.0) / 2.0) * SLOT_W;
        let y = ((rows as f32 - 1.0) / 2.0 - r as f32) * SLOT_H;
        centres.push(Vec3::new(x, y, 0.0));
    }
    (centres, columns as f32 * SLOT_W, rows as f32 * SLOT_H)
}

/// The avatar stage: an offscreen MSAA view with every avatar laid out side by side.
pub struct AvatarStage {
    pub renderer: AvatarRenderer,
    camera: wgpu::Buffer,
    camera_bind_group: wgpu::BindGroup,
    msaa: wgpu::TextureView,
    depth: wgpu::TextureView,
    pub target: OffscreenTarget,
    pub orbit: Orbit,
    /// Counts the times the view's textures were (re)allocated: a new target holds no picture.
    generation: u64,
}

impl AvatarStage {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, width: u32, height: u32) -> AvatarStage {
        let renderer = AvatarRenderer::new(device, queue, OffscreenTarget::FORMAT);
        let camera = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("avatar camera"),
            size: std::mem::size_of::<CameraUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let camera_bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("avatar camera"),
            layout: &renderer.camera_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: camera.as_entire_binding(),
            }],
        });
        let (msaa, depth, target) = Self::attachments(device, width, height);
        AvatarStage {
            renderer,
            camera,
            camera_bind_group,
            msaa,
            depth,
            target,
            orbit: Orbit::default(),
            generation: 0,
        }
    }

    /// Changes whenever the view's textures are reallocated (their old picture is gone).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn attachments(
        device: &wgpu::Device,
        width: u32,
        height: u32,
    ) -> (wgpu::TextureView, wgpu::TextureView, OffscreenTarget) {
        let (width, height) = (width.max(1), height.max(1));
        let make = |format, label| {
            device
                .create_texture(&wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width,
                        height,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: SAMPLE_COUNT,
                    dimension: wgpu::TextureDimension::D2,
                    format,
                    usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                    view_formats: &[],
                })
                .create_view(&Default::default())
        };
        (
            make(OffscreenTarget::FORMAT, "avatar msaa"),
            make(DEPTH_FORMAT, "avatar depth"),
            OffscreenTarget::new(device, width, height),
        )
    }

    /// Reallocates the view for a new size (no-op when unchanged).
    pub fn resize(&mut self, device: &wgpu::Device, width: u32, height: u32) {
        if (width.max(1), height.max(1)) != (self.target.width, self.target.height) {
            (self.msaa, self.depth, self.target) = Self::attachments(device, width, height);
            self.generation += 1;
        }
    }

    pub fn upload(&self, device: &wgpu::Device, queue: &wgpu::Queue, avatar: &Avatar) -> GpuAvatar {
        self.renderer.upload(device, queue, avatar)
    }

    /// See [`AvatarRenderer::upload_mesh`].
    pub fn upload_mesh(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        avatar: &Avatar,
    ) -> Arc<GpuMesh> {
        self.renderer.upload_mesh(device, queue, avatar)
    }

    /// See [`AvatarRenderer::instantiate`].
    pub fn instantiate(&self, device: &wgpu::Device, mesh: &Arc<GpuMesh>) -> GpuAvatar {
        self.renderer.instantiate(device, mesh)
    }

    /// Draws `avatars` (with their poses) into [`AvatarStage::target`].
    pub fn render(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        avatars: &[(&GpuAvatar, &AvatarPose)],
    ) {
        let aspect = self.target.width as f32 / self.target.height as f32;
        let (centres, grid_w, grid_h) = slots(avatars.len(), aspect);
        let fov = 24f32.to_radians();
        let half = (fov / 2.0).tan();
        let distance = ((grid_h / 2.0) / half).max((grid_w / 2.0) / (half * aspect)) * 1.08
            / self.orbit.zoom.max(0.05);
        let orbit = Quat::from_rotation_y(self.orbit.yaw.to_radians())
            * Quat::from_rotation_x(-self.orbit.pitch.to_radians());
        let eye = orbit * Vec3::new(0.0, 0.0, distance);
        let view = glam::camera::rh::view::look_at_mat4(eye, Vec3::ZERO, orbit * Vec3::Y);
        let proj = glam::camera::rh::proj::directx::perspective(
            fov,
            aspect,
            distance * 0.05,
            distance * 4.0,
        );
        let camera = CameraUniform {
            view_proj: (proj * view).to_cols_array_2d(),
            eye: [eye.x, eye.y, eye.z, 1.0],
        };
        queue.write_buffer(&self.camera, 0, bytemuck::bytes_of(&camera));
        for ((avatar, pose), centre) in avatars.iter().zip(&centres) {
            let mesh = &avatar.mesh;
            let (lo, hi) = mesh.focus;
            let scale = 0.40 / (hi.y - lo.y).max(1e-4);
            let focus_centre = (lo + hi) / 2.0;
            let model = Mat4::from_translation(*centre)
                * Mat4::from_scale(Vec3::splat(scale))
                * Mat4::from_translation(-focus_centre);
            let pivot = mesh.head_pivot;
            let head = Mat4::from_translation(pivot)
                * Mat4::from_quat(pose.head.normalize())
                * Mat4::from_translation(-pivot);
            let instance = InstanceUniform {
                model: model.to_cols_array_2d(),
                head: head.to_cols_array_2d(),
            };
            queue.write_buffer(&avatar.instance, 0, bytemuck::bytes_of(&instance));
            for (prim, pose_buffers) in mesh.primitives.iter().zip(&avatar.primitives) {
                let mut uniform = prim.uniform;
                let mut active: Vec<(usize, f32)> = prim
                    .targets
                    .iter()
                    .enumerate()
                    .filter_map(|(local, &global)| {
                        let w = pose.morph_weights.get(global).copied().unwrap_or(0.0);
                        (w.abs() > 1e-4 && w.is_finite()).then_some((local, w))
                    })
                    .collect();
                if active.len() > MAX_ACTIVE_TARGETS {
                    active.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
                    active.truncate(MAX_ACTIVE_TARGETS);
                }
                uniform.info[1] = active.len() as u32;
                for (k, (local, w)) in active.iter().enumerate() {
                    let slot = &mut uniform.active[k / 2];
                    slot[2 * (k % 2)] = *local as f32;
                    slot[2 * (k % 2) + 1] = *w;
                }
                queue.write_buffer(&pose_buffers.params, 0, bytemuck::bytes_of(&uniform));
            }
        }
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("avatars"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &self.msaa,
                    depth_slice: None,
                    resolve_target: Some(&self.target.view),
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(BACKGROUND),
                        store: wgpu::StoreOp::Discard,
                    },
                })],
                depth_stencil_attachment: Some(wgpu::RenderPassDepthStencilAttachment {
                    view: &self.depth,
                    depth_ops: Some(wgpu::Operations {
                        load: wgpu::LoadOp::Clear(1.0),
                        store: wgpu::StoreOp::Discard,
                    }),
                    stencil_ops: None,
                }),
                ..Default::default()
            });
            pass.set_bind_group(0, &self.camera_bind_group, &[]);
            for blend_pass in [false, true] {
                pass.set_pipeline(if blend_pass {
                    &self.renderer.blended
                } else {
                    &self.renderer.opaque
                });
                for (avatar, _) in avatars {
                    pass.set_bind_group(1, &avatar.instance_bind_group, &[]);
                    let primitives = avatar.mesh.primitives.iter().zip(&avatar.primitives);
                    for (prim, pose_buffers) in primitives.filter(|(p, _)| p.blend == blend_pass) {
                        pass.set_bind_group(2, &pose_buffers.bind_group, &[]);
                        pass.set_vertex_buffer(0, prim.vertices.slice(..));
                        pass.set_index_buffer(prim.indices.slice(..), wgpu::IndexFormat::Uint32);
                        pass.draw_indexed(0..prim.index_count, 0, 0..1);
                    }
                }
            }
        }
        queue.submit([encoder.finish()]);
    }

    /// The stage's pixels (blocks until the GPU is done).
    pub fn read_pixels(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> anyhow::Result<image::RgbaImage> {
        self.target.read_pixels(device, queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_a_wide_view_in_one_row_and_a_crowd_in_a_grid() {
        let (c, w, h) = slots(3, 16.0 / 9.0);
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|p| p.y == 0.0), "{c:?}");
        assert!(w > h);
        let (c, _, h) = slots(10, 16.0 / 9.0);
        assert_eq!(c.len(), 10);
        assert!(h > 0.6, "10 avatars take more than one row");
        // no two slots coincide
        for i in 0..c.len() {
            for j in i + 1..c.len() {
                assert!(c[i].distance(c[j]) > 0.3);
            }
        }
    }
}
