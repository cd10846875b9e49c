//! GPU device creation: for a window surface, or headless (tests, `render`, benchmarks).

use anyhow::{anyhow, Context, Result};

/// One wgpu device and its queue, with a description of the adapter for the UI.
pub struct Gpu {
    pub instance: wgpu::Instance,
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
}

impl Gpu {
    /// A device with no surface. Honours `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`, so tests and CI can
    /// pin Mesa's software Vulkan (lavapipe).
    pub fn headless() -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        Self::with_instance(instance, None)
    }

    /// A device able to present to `surface` (created from `instance`).
    pub fn with_instance(
        instance: wgpu::Instance,
        surface: Option<&wgpu::Surface<'_>>,
    ) -> Result<Gpu> {
        let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
            &instance, surface,
        ))
        .map_err(|e| {
            anyhow!(
                "no usable GPU adapter ({e}); install a Vulkan driver \
                 (Debian/Ubuntu: apt install libvulkan1 mesa-vulkan-drivers)"
            )
        })?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("polyface"),
            required_limits: wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits()),
            ..Default::default()
        }))
        .context("creating the GPU device")?;
        Ok(Gpu {
            instance,
            adapter,
            device,
            queue,
        })
    }

    /// E.g. "llvmpipe (LLVM 15.0.6, 256 bits) · Vulkan · Cpu".
    pub fn describe(&self) -> String {
        let info = self.adapter.get_info();
        format!(
            "{} · {:?} · {:?}",
            info.name, info.backend, info.device_type
        )
    }
}

/// Keeps the GPU at most one frame behind: before a frame's work is submitted, the previous
/// frame's must be done. On a slow GPU (Mesa's lavapipe runs on the CPU) submissions would
/// otherwise queue up faster than they finish, each holding its command buffers and staging
/// memory; waiting here costs the UI thread what the GPU is behind, and nothing when it keeps up.
#[derive(Default)]
pub struct FramesInFlight {
    previous: Option<wgpu::SubmissionIndex>,
}

impl FramesInFlight {
    /// Longest wait for the previous frame (a GPU that is gone does not hang the UI).
    const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

    /// Waits for the previous frame's work, then submits this frame's.
    pub fn submit<I: IntoIterator<Item = wgpu::CommandBuffer>>(&mut self, gpu: &Gpu, commands: I) {
        if let Some(previous) = self.previous.take() {
            let _ = gpu.device.poll(wgpu::PollType::Wait {
                submission_index: Some(previous),
                timeout: Some(Self::MAX_WAIT),
            });
        }
        self.previous = Some(gpu.queue.submit(commands));
    }
}
