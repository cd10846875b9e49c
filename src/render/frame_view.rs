//! The camera view: the current frame as a texture, drawn aspect-preserved into a rectangle.

/// A rectangle in physical pixels of the render target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelRect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl PixelRect {
    /// The largest rectangle of `content` aspect ratio centred in `self` (letterbox / pillarbox).
    pub fn fit(&self, content_width: u32, content_height: u32) -> PixelRect {
        if content_width == 0 || content_height == 0 || self.width <= 0.0 || self.height <= 0.0 {
            return PixelRect {
                width: 0.0,
                height: 0.0,
                ..*self
            };
        }
        let scale = (self.width / content_width as f32).min(self.height / content_height as f32);
        let width = content_width as f32 * scale;
        let height = content_height as f32 * scale;
        PixelRect {
            x: self.x + (self.width - width) / 2.0,
            y: self.y + (self.height - height) / 2.0,
            width,
            height,
        }
    }

    /// This rectangle clipped to a `width` × `height` target.
    pub fn clipped_to(&self, width: u32, height: u32) -> PixelRect {
        let x0 = self.x.clamp(0.0, width as f32);
        let y0 = self.y.clamp(0.0, height as f32);
        let x1 = (self.x + self.width).clamp(0.0, width as f32);
        let y1 = (self.y + self.height).clamp(0.0, height as f32);
        PixelRect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

/// GPU resources to show one frame: the texture it is uploaded to and the pipeline that draws it.
pub struct FrameView {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    texture: Option<(wgpu::Texture, wgpu::BindGroup)>,
    texture_format: wgpu::TextureFormat,
    size: (u32, u32),
}

impl FrameView {
    /// `target_format`: the format of the surface or texture the view is drawn into. The frame
    /// texture gets the matching (sRGB or not) format, so camera bytes reach the target unchanged.
    pub fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> FrameView {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("frame.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/frame.wgsl").into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("frame"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: true },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("frame"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("frame"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(target_format.into())],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("frame"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        FrameView {
            pipeline,
            layout,
            sampler,
            texture: None,
            texture_format: if target_format.is_srgb() {
                wgpu::TextureFormat::Rgba8UnormSrgb
            } else {
                wgpu::TextureFormat::Rgba8Unorm
            },
            size: (0, 0),
        }
    }

    /// Size of the last uploaded frame.
    pub fn frame_size(&self) -> (u32, u32) {
        self.size
    }

    /// Uploads RGBA pixels (sRGB), reallocating the texture only when the size changes.
    pub fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, rgba: &image::RgbaImage) {
        let (width, height) = rgba.dimensions();
        if width == 0 || height == 0 {
            return;
        }
        if self.texture.is_none() || self.size != (width, height) {
            let texture = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("camera frame"),
                size: wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: self.texture_format,
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            });
            let view = texture.create_view(&Default::default());
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("camera frame"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::TextureView(&view),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::Sampler(&self.sampler),
                    },
                ],
            });
            self.texture = Some((texture, bind_group));
            self.size = (width, height);
        }
        let (texture, _) = self.texture.as_ref().expect("texture was just created");
        queue.write_texture(
            texture.as_image_copy(),
            rgba.as_raw(),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(4 * width),
                rows_per_image: Some(height),
            },
            wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
        );
    }

    /// Draws the frame aspect-preserved inside `area` of a `target_size` target.
    /// Returns the rectangle the frame occupies (nothing is drawn before the first upload).
    pub fn draw(
        &self,
        pass: &mut wgpu::RenderPass<'_>,
        area: PixelRect,
        target_size: (u32, u32),
    ) -> Option<PixelRect> {
        let (_, bind_group) = self.texture.as_ref()?;
        let rect = area
            .fit(self.size.0, self.size.1)
            .clipped_to(target_size.0, target_size.1);
        if rect.width < 1.0 || rect.height < 1.0 {
            return None;
        }
        pass.set_viewport(rect.x, rect.y, rect.width, rect.height, 0.0, 1.0);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.draw(0..3, 0..1);
        pass.set_viewport(
            0.0,
            0.0,
            target_size.0 as f32,
            target_size.1 as f32,
            0.0,
            1.0,
        );
        Some(rect)
    }
}

/// RGB → RGBA with opaque alpha, reusing `out`'s allocation.
pub fn rgb_to_rgba(rgb: &image::RgbImage, out: &mut image::RgbaImage) {
    let (width, height) = rgb.dimensions();
    if out.dimensions() != (width, height) {
        *out = image::RgbaImage::new(width, height);
    }
    for (dst, src) in out
        .as_mut()
        .chunks_exact_mut(4)
        .zip(rgb.as_raw().chunks_exact(3))
    {
        dst[..3].copy_from_slice(src);
        dst[3] = 255;
    }
}

/// RGB → a new RGBA image.
pub fn rgb_to_rgba_image(rgb: &image::RgbImage) -> image::RgbaImage {
    let mut out = image::RgbaImage::new(0, 0);
    rgb_to_rgba(rgb, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_letterboxes_wide_content_into_tall_area() {
        let area = PixelRect {
            x: 10.0,
            y: 0.0,
            width: 100.0,
            height: 200.0,
        };
        let r = area.fit(200, 100);
        assert_eq!(
            r,
            PixelRect {
                x: 10.0,
                y: 75.0,
                width: 100.0,
                height: 50.0
            }
        );
    }

    #[test]
    fn fit_pillarboxes_tall_content_and_handles_empty() {
        let area = PixelRect {
            x: 0.0,
            y: 0.0,
            width: 400.0,
            height: 100.0,
        };
        let r = area.fit(100, 200);
        assert_eq!(
            r,
            PixelRect {
                x: 175.0,
                y: 0.0,
                width: 50.0,
                height: 100.0
            }
        );
        assert_eq!(area.fit(0, 10).width, 0.0);
    }

    #[test]
    fn rgb_to_rgba_sets_opaque_alpha() {
        let rgb = image::RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let mut out = image::RgbaImage::new(0, 0);
        rgb_to_rgba(&rgb, &mut out);
        assert_eq!(out.as_raw(), &vec![1, 2, 3, 255, 4, 5, 6, 255]);
    }
}
