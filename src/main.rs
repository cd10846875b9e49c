use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use polyface::cli::{BenchArgs, Cli, Command, EvalArgs, PipelineKind, PipelineOrNone, RunArgs};

fn main() -> ExitCode {
    // before any thread or library allocates: see src/memory.rs
    polyface::memory::fix_thresholds();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match run(cli.command.unwrap_or(Command::Run(RunArgs::default()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: what failed and, through the error chain, why.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => polyface::app::run(args),
        Command::Track(args) => {
            let models = polyface::vision::models_dir(args.model.models.as_deref());
            let (device, device_line) = polyface::vision::open_device(args.model.device)?;
            log::info!("networks on {device_line}");
            let pipeline = match args.pipeline {
                PipelineOrNone(Some(kind)) => Some(
                    polyface::vision::load_pipeline(kind, &models, &device).with_context(|| {
                        format!(
                            "loading the {} pipeline (or run with --pipeline {} or none)",
                            kind.name().to_uppercase(),
                            kind.other().name()
                        )
                    })?,
                ),
                PipelineOrNone(None) => None,
            };
            // people the user named are recognised (read only: `track` never names anybody)
            let (recogniser, problem) =
                polyface::known::Recogniser::open(polyface::known::KnownPeople::default_path());
            if let Some(problem) = problem {
                log::warn!("{problem}");
            }
            let mut people = polyface::track::People::default()
                .with_reid_from(&models, &device)
                .with_known(recogniser);
            people.tracker.config.smoothing.landmarks.min_cutoff = args.min_cutoff;
            people.tracker.config.smoothing.landmarks.beta = args.beta;
            let mut processor = polyface::processor::FrameProcessor::new(pipeline, people);
            if let Some(target) = &args.stream {
                let routes = polyface::settings::Settings::default_path()
                    .map(|p| polyface::settings::Settings::load(&p).vmc_routes)
                    .unwrap_or_default();
                processor.start_streaming(
                    polyface::stream::VmcStreamer::new(target, args.stream_names)?
                        .with_routes(&routes)?,
                );
            }
            if let Some(dir) = &args.record {
                processor.start_recording(dir)?;
            }
            let job = polyface::headless::TrackJob {
                max_frames: args.max_frames,
                processor,
            };
            let summary = polyface::headless::track(
                &args.input.spec(),
                &args.input.options(false),
                &args.out,
                job,
            )?;
            println!(
                "{} frames, {} faces -> {} ({} warnings)",
                summary.frames,
                summary.faces,
                args.out.display(),
                summary.warnings.len()
            );
            Ok(())
        }
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        Command::Soak(args) => {
            anyhow::ensure!(
                polyface::soak::run(&args)?,
                "the soak run failed (see above)"
            );
            Ok(())
        }
        Command::Render(args) => {
            let avatars = args
                .avatar
                .iter()
                .map(|p| polyface::avatar::Avatar::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let head =
                polyface::render::snapshot::head_from_degrees(args.yaw, args.pitch, args.roll);
            let image =
                polyface::render::snapshot::render(&avatars, &args.weights, head, args.size)?;
            image
                .save(&args.out)
                .with_context(|| format!("{}: cannot write the image", args.out.display()))?;
            println!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Recover { dir } => {
            let files = polyface::record::recover(&dir)?;
            for path in &files {
                println!("wrote {}", path.display());
            }
            if files.is_empty() {
                println!("the take holds no confirmed people: nothing to rebuild");
            }
            Ok(())
        }
        Command::People(args) => polyface::known::command::run(args),
        Command::MakeAvatars { out } => {
            for path in polyface::avatar::generate::write_all(&out)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Cameras => {
            let cameras = polyface::capture::list_cameras()?;
            if cameras.is_empty() {
                println!("no cameras found");
            }
            for camera in cameras {
                println!("{}\t{}\t{}", camera.index, camera.name, camera.description);
            }
            Ok(())
        }
    }
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use polyface::vision;
    let mut images = polyface::eval::read_jsonl(&args.data)?;
    if let Some(split) = &args.split {
        images.retain(|i| i.split.as_deref() == Some(split.as_str()));
        anyhow::ensure!(
            !images.is_empty(),
            "{}: no records with split {split:?}",
            args.data.display()
        );
    }
    let (device, device_line) = vision::open_device(args.model.device)?;
    eprintln!("eval: networks on {device_line}");
    let models = vision::models_dir(args.model.models.as_deref());
    if args.compare {
        let mut sfn = vision::SfnPipeline::load(&models, &device)?;
        let mut mfn = vision::MfnPipeline::load(&models, &device)?;
        let c = polyface::eval::compare_pipelines(&mut sfn, &mut mfn, &images, args.limit)?;
        if args.json {
            println!("{}", serde_json::to_string(&c)?);
        } else {
            print_report("SFN pipeline, every face it found", &c.sfn);
            print_report("MFN pipeline, every face it found", &c.mfn);
            print_report("SFN pipeline, faces both found", &c.both.sfn);
            print_report("MFN pipeline, faces both found", &c.both.mfn);
            let r = &c.both.mfn_over_sfn;
            println!("\nMFN / SFN on the {} faces both found", c.both.faces);
            println!("NME        {:.3}", r.nme);
            if let Some(p) = r.pose_deg {
                println!("pose error {p:.3}");
            }
            if let Some(b) = r.blend_mae {
                println!("blend MAE  {b:.3}");
            }
        }
        // After the figures are out, so a failed write loses none of them.
        if let Some(path) = &args.per_face {
            c.write_per_face_csv(path)?;
        }
        return Ok(());
    }
    if let Some(path) = &args.candidates {
        anyhow::ensure!(
            args.pipeline == PipelineKind::Sfn,
            "--candidates is for the SFN pipeline (the detector, then the SFN's face confidence)"
        );
        let mut pipeline = vision::SfnPipeline::load(&models, &device)?;
        pipeline.min_face_score = 0.0;
        let written = polyface::eval::write_candidates(&mut pipeline, &images, args.limit, path)?;
        eprintln!("{written} candidates written to {}", path.display());
        return Ok(());
    }
    let report = match args.pipeline {
        PipelineKind::Sfn if args.given_boxes => {
            let sfn = vision::Sfn::load(&models.join("sfn.safetensors"), &device)?;
            polyface::eval::eval_sfn_given_boxes(&sfn, &images, args.limit)?
        }
        PipelineKind::Sfn => {
            let mut pipeline = vision::SfnPipeline::load(&models, &device)?;
            polyface::eval::eval_pipeline(&mut pipeline, &images, args.limit)?
        }
        PipelineKind::Mfn => {
            anyhow::ensure!(
                !args.given_boxes,
                "--given-boxes is for the SFN: the MFN finds faces itself"
            );
            let mut pipeline = vision::MfnPipeline::load(&models, &device)?;
            polyface::eval::eval_pipeline(&mut pipeline, &images, args.limit)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report_lines(&report);
    }
    Ok(())
}

fn print_report(title: &str, report: &polyface::eval::EvalReport) {
    println!("\n{title}");
    print_report_lines(report);
}

fn print_report_lines(report: &polyface::eval::EvalReport) {
    println!("faces      {}", report.faces);
    println!("NME        {:.2} %", report.nme);
    println!("FR@10%     {:.2} %", report.fr10);
    if let Some(p) = report.pose_deg {
        println!("pose error {p:.2} deg");
    }
    if let Some(b) = report.blend_mae {
        println!("blend MAE  {b:.4}");
    }
    if let Some(g) = report.gaze_deg {
        println!("eye gaze   {g:.2} deg (from the eyeLook weights, against the teacher's)");
    }
    if let (Some(r), Some(p)) = (report.recall, report.precision) {
        println!("recall     {r:.4}");
        println!("precision  {p:.4}");
    }
    if let Some(r) = report.recall_20px {
        println!("recall     {r:.4} (faces >= 20 px tall)");
    }
    if let Some(ap) = report.ap50 {
        println!("AP50       {ap:.4}");
    }
    if !report.by_size.is_empty() {
        println!("by face height (jaw to brows, px): found / labelled, NME");
        for b in &report.by_size {
            let nme = b.nme.map_or("-".to_string(), |n| format!("{n:.2} %"));
            println!("  {:>7}  {:>5} / {:<5} {nme}", b.height, b.found, b.faces);
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use polyface::vision;
    let (device, device_line) = vision::open_device(args.model.device)?;
    eprintln!("bench: networks on {device_line}");
    let models = vision::models_dir(args.model.models.as_deref());
    let crops = match &args.input {
        Some(dir) => polyface::bench::face_crops_from_folder(dir, &models, 20)?,
        None => {
            let crops = polyface::bench::load_face_crops(&args.data, 60).with_context(|| {
                format!(
                    "reading face crops from {} (use --data, or --input with your own photos)",
                    args.data.display()
                )
            })?;
            // N crops must mean N faces for both pipelines.
            let cpu = candle_core::Device::Cpu;
            let offered = crops.len();
            let kept = polyface::bench::single_face_crops(
                crops,
                &vision::Detector::load(&models.join("detector.safetensors"), &cpu)?,
                &vision::Mfn::load(&models.join("mfn.safetensors"), &cpu)?,
                20,
            )?;
            eprintln!(
                "bench: {} face crops that hold one face for both networks (from the first {offered} of helen/test.jsonl)",
                kept.len()
            );
            kept
        }
    };
    if args.jitter {
        let sfn = vision::Sfn::load(&models.join("sfn.safetensors"), &device)?;
        let report = polyface::bench::bench_jitter(&sfn, &crops, args.frames)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "jitter on still input ({} faces x {} frames): raw {:.3} % of IOD, smoothed {:.3} %; added lag {:.0} ms",
                report.faces, report.frames, report.raw_pct, report.smoothed_pct, report.lag_ms
            );
        }
        return Ok(());
    }
    if args.layers {
        let faces = args.faces.first().copied().unwrap_or(1);
        let (frame, _) = polyface::bench::compose_frame(faces, &crops);
        let detector = vision::Detector::load(&models.join("detector.safetensors"), &device)?;
        let mfn = vision::Mfn::load(&models.join("mfn.safetensors"), &device)?;
        let (detector_input, _) = detector.prepare(&frame)?;
        let (mfn_input, _) = mfn.prepare(&frame)?;
        let detector_layers = polyface::bench::layer_profile(args.frames, || {
            Ok(detector.layer_times(&detector_input)?)
        })?;
        let mfn_layers =
            polyface::bench::layer_profile(args.frames, || Ok(mfn.layer_times(&mfn_input)?))?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "faces": faces, "detector": detector_layers, "mfn": mfn_layers })
            );
        } else {
            for (net, layers) in [("detector", &detector_layers), ("mfn", &mfn_layers)] {
                println!("{}", polyface::bench::layer_table(net, layers));
            }
        }
        return Ok(());
    }
    // Off the CPU, first check the device computes what the CPU computes.
    let mut max_diff_vs_cpu = None;
    if !device.is_cpu() {
        let diffs = polyface::bench::check_against_cpu(&models, &device, &crops, 5)?;
        for (net, diff) in &diffs {
            eprintln!("{net} outputs on {device_line} vs cpu: max |diff| {diff:.2e}");
        }
        if let Some((net, diff)) = diffs.iter().find(|(_, d)| d.is_nan() || *d > 1e-2) {
            anyhow::bail!(
                "the {net} outputs on {device_line} differ from the CPU's by {diff} (more than 1e-2): not timing a wrong result"
            );
        }
        max_diff_vs_cpu = Some(
            diffs
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
    }
    let mut avatars = match args.avatars {
        true => Some(polyface::bench::AvatarBench::new()?),
        false => None,
    };
    // Load every network first, then let all (pipeline, faces) cases take turns frame by frame.
    let mut sfn_models = None;
    let mut mfn_model = None;
    for pipeline in &args.pipeline {
        match pipeline {
            PipelineKind::Sfn => {
                sfn_models = Some((
                    vision::Detector::load(&models.join("detector.safetensors"), &device)?,
                    vision::Sfn::load(&models.join("sfn.safetensors"), &device)?,
                ))
            }
            PipelineKind::Mfn => {
                mfn_model = Some(vision::Mfn::load(&models.join("mfn.safetensors"), &device)?)
            }
        }
    }
    let mut cases = Vec::new();
    for pipeline in &args.pipeline {
        for &faces in &args.faces {
            match (pipeline, &sfn_models, &mfn_model) {
                (PipelineKind::Sfn, Some((detector, sfn)), _) => {
                    cases.push(polyface::bench::sfn_case(detector, sfn, &crops, faces))
                }
                (PipelineKind::Mfn, _, Some(mfn)) => {
                    cases.push(polyface::bench::mfn_case(mfn, &crops, faces))
                }
                _ => {}
            }
        }
    }
    let results = polyface::bench::run_interleaved(cases, (args.frames, 5), avatars.as_mut())?;
    let device_name = if device.is_cpu() {
        format!("cpu ({} threads)", rayon::current_num_threads())
    } else {
        device_line.clone()
    };
    if let Some(plot) = &args.plot {
        polyface::bench::plot::write_plot(&results, &device_name, plot)?;
        eprintln!("wrote {}", plot.display());
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"device": device_name, "frame": polyface::bench::FRAME_SIZE, "max_diff_vs_cpu": max_diff_vs_cpu, "avatars_on": avatars.as_ref().map(|a| a.adapter()), "results": results})
        );
    } else {
        print!("{}", polyface::bench::table(&results));
        if let Some(avatars) = &avatars {
            println!(
                "totals run from the frame to one avatar per face drawn at 1280x720 on {} (GPU finished); avatars stage:",
                avatars.adapter()
            );
            for r in &results {
                if let Some(m) = r.stages.get("avatars") {
                    println!(
                        "  {} {:>2} faces: {:.2} ms (p95 {:.2})",
                        r.pipeline, r.faces, m.median_ms, m.p95_ms
                    );
                }
            }
        }
    }
    Ok(())
}
