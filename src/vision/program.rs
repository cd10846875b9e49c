//! Networks described as a *program*: an ordered list of layers, each reading named tensors and
//! writing one. The training code exports the list in the model file's metadata, so the Rust
//! forward pass is the same program with the same tensor names. Ops: conv3x3, dwconv3x3, conv1x1
//! (batch norm folded in, every conv has weight and bias), add, upsample2x, gap (global average
//! pool); activation relu/none.

use std::collections::HashMap;

use candle_core::{Module, Result as CandleResult, Tensor};
use serde::Deserialize;

use super::model_file::{ModelError, ModelFile};
use super::ops::{
    add_activate, conv2d, depthwise3x3, on_pool, pointwise, pointwise_residual, upsample2x,
    Activation,
};

/// What a layer computes, as the training code names it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum LayerOp {
    #[serde(rename = "conv3x3")]
    Conv3x3,
    #[serde(rename = "dwconv3x3")]
    Depthwise3x3,
    #[serde(rename = "conv1x1")]
    Conv1x1,
    #[serde(rename = "add")]
    Add,
    #[serde(rename = "upsample2x")]
    Upsample2x,
    /// Global average pool over H and W.
    #[serde(rename = "gap")]
    GlobalAveragePool,
}

/// One layer as the training code writes it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LayerSpec {
    pub name: String,
    pub op: LayerOp,
    /// One input tensor name, or two for `add`.
    pub input: LayerInput,
    #[serde(rename = "in")]
    pub in_channels: usize,
    #[serde(rename = "out")]
    pub out_channels: usize,
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default)]
    pub act: Activation,
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LayerInput {
    One(String),
    Two([String; 2]),
}

impl LayerInput {
    /// The names of the tensors the layer reads.
    pub fn names(&self) -> Vec<&str> {
        match self {
            LayerInput::One(name) => vec![name.as_str()],
            LayerInput::Two([a, b]) => vec![a.as_str(), b.as_str()],
        }
    }
}

enum Op {
    Conv3x3 {
        weight: Tensor,
        bias: Tensor,
        stride: usize,
    },
    Depthwise {
        weight: Tensor,
        bias: Tensor,
        stride: usize,
    },
    Pointwise {
        weight: Tensor,
        bias: Tensor,
    },
    Add,
    Upsample2x,
    /// Global average pool over H and W: (N, C, H, W) -> (N, C, 1, 1).
    GlobalAveragePool,
}

struct Layer {
    name: String,
    /// Indices into the tensor table: 0 is the input, layer i writes slot i + 1.
    inputs: Vec<usize>,
    op: Op,
    activation: Activation,
}

/// A loaded program: layers with their weights, ready to run.
pub struct Program {
    layers: Vec<Layer>,
    /// Slot of every named tensor (the input is slot 0).
    slots: HashMap<String, usize>,
}

impl Program {
    /// Builds the program from its layer list, loading each conv's `<name>.weight` / `<name>.bias`.
    pub fn new(specs: &[LayerSpec], file: &ModelFile) -> Result<Program, ModelError> {
        let bad = |problem: String| ModelError::Metadata {
            path: file.path.clone(),
            key: "program".into(),
            problem,
        };
        let mut slots: HashMap<&str, usize> = HashMap::from([("input", 0)]);
        let mut layers = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let inputs = spec
                .input
                .names()
                .iter()
                .map(|n| {
                    slots.get(n).copied().ok_or_else(|| {
                        bad(format!(
                            "layer {} reads {n:?} before it is written",
                            spec.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (cin, cout) = (spec.in_channels, spec.out_channels);
            let weight = |shape: &[usize]| file.tensor(&format!("{}.weight", spec.name), shape);
            let bias = || file.tensor(&format!("{}.bias", spec.name), &[cout]);
            let op = match spec.op {
                LayerOp::Depthwise3x3 if !(1..=2).contains(&spec.stride) => {
                    return Err(bad(format!(
                        "layer {}: depthwise stride {} (the kernel takes 1 or 2)",
                        spec.name, spec.stride
                    )));
                }
                LayerOp::Conv3x3 => Op::Conv3x3 {
                    weight: weight(&[cout, cin, 3, 3])?,
                    bias: bias()?,
                    stride: spec.stride,
                },
                LayerOp::Depthwise3x3 if cin == cout => Op::Depthwise {
                    weight: weight(&[cout, 1, 3, 3])?,
                    bias: bias()?,
                    stride: spec.stride,
                },
                LayerOp::Conv1x1 if spec.stride == 1 => Op::Pointwise {
                    weight: weight(&[cout, cin, 1, 1])?,
                    bias: bias()?,
                },
                LayerOp::Add if inputs.len() == 2 => Op::Add,
                LayerOp::Upsample2x => Op::Upsample2x,
                LayerOp::GlobalAveragePool => Op::GlobalAveragePool,
                other => {
                    return Err(bad(format!(
                        "layer {}: {other:?} with {} input(s), {cin} -> {cout} channels, stride {} \
                         is not supported",
                        spec.name,
                        inputs.len(),
                        spec.stride
                    )))
                }
            };
            if !matches!(op, Op::Add) && inputs.len() != 1 {
                return Err(bad(format!("layer {} takes one input", spec.name)));
            }
            let activation = spec.act;
            layers.push(Layer {
                name: spec.name.clone(),
                inputs,
                op,
                activation,
            });
            slots.insert(spec.name.as_str(), i + 1);
        }
        if layers.is_empty() {
            return Err(bad("no layers".into()));
        }
        let slots = slots.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Ok(Program { layers, slots })
    }

    /// Whether the program writes a tensor called `name`.
    pub fn has_output(&self, name: &str) -> bool {
        self.slots.get(name).is_some_and(|&slot| slot > 0)
    }

    /// Runs every layer and returns the tensors named in `outputs` (networks with several heads).
    pub fn forward_outputs(&self, input: &Tensor, outputs: &[&str]) -> CandleResult<Vec<Tensor>> {
        let keep = outputs
            .iter()
            .map(|name| {
                self.slots.get(*name).copied().ok_or_else(|| {
                    candle_core::Error::Msg(format!("the program has no tensor {name:?}"))
                })
            })
            .collect::<CandleResult<Vec<usize>>>()?;
        let mut tensors = self.run(input, &keep, None)?;
        keep.iter()
            .map(|&slot| {
                tensors[slot]
                    .take()
                    .ok_or_else(|| candle_core::Error::Msg("output released".into()))
            })
            .collect()
    }

    /// Runs every layer once and returns each layer's wall time in milliseconds, in order (a
    /// fused 1×1 conv + add is one entry named `<conv>+add`). CPU timings: queued GPU work is
    /// not waited for.
    pub fn layer_times(&self, input: &Tensor) -> CandleResult<Vec<(String, f64)>> {
        let mut times = Vec::with_capacity(self.layers.len());
        self.run(input, &[], Some(&mut times))?;
        Ok(times)
    }

    /// Evaluates the layers; slots no later layer reads are released early unless in `keep`.
    /// With `times`, each layer's wall time is appended to it. On the CPU, on rayon's pool.
    fn run(
        &self,
        input: &Tensor,
        keep: &[usize],
        times: Option<&mut Vec<(String, f64)>>,
    ) -> CandleResult<Vec<Option<Tensor>>> {
        if input.device().is_cpu() {
            on_pool(|| self.run_layers(input, keep, times))
        } else {
            self.run_layers(input, keep, times)
        }
    }

    fn run_layers(
        &self,
        input: &Tensor,
        keep: &[usize],
        mut times: Option<&mut Vec<(String, f64)>>,
    ) -> CandleResult<Vec<Option<Tensor>>> {
        let mut last_use = vec![0usize; self.layers.len() + 1];
        for (i, layer) in self.layers.iter().enumerate() {
            for &slot in &layer.inputs {
                last_use[slot] = i;
            }
        }
        for &slot in keep {
            last_use[slot] = usize::MAX;
        }
        let mut tensors: Vec<Option<Tensor>> = vec![None; self.layers.len() + 1];
        tensors[0] = Some(input.clone());
        let mut fused_into_previous = false;
        for (i, layer) in self.layers.iter().enumerate() {
            if std::mem::take(&mut fused_into_previous) {
                continue;
            }
            let get = |slot: usize| {
                tensors[slot].as_ref().ok_or_else(|| {
                    candle_core::Error::Msg(format!("tensor {slot} already released"))
                })
            };
            let x = get(layer.inputs[0])?;
            let started = times.is_some().then(std::time::Instant::now);
            let mut record = |name: String| {
                if let (Some(times), Some(started)) = (times.as_deref_mut(), started) {
                    times.push((name, started.elapsed().as_secs_f64() * 1e3));
                }
            };
            if let Some((skip, next)) = self.residual_after(i, &last_use) {
                // conv1x1 (no activation) then add: one pass, no intermediate tensor.
                let Op::Pointwise { weight, bias } = &layer.op else {
                    unreachable!("residual_after checks the op")
                };
                let y = pointwise_residual(x, weight, bias, get(skip)?, next.activation)?;
                record(format!("{}+add", layer.name));
                for &slot in layer.inputs.iter().chain(&next.inputs) {
                    if last_use[slot] <= i + 1 {
                        tensors[slot] = None;
                    }
                }
                tensors[i + 2] = Some(y);
                fused_into_previous = true;
                continue;
            }
            let y = match &layer.op {
                Op::Conv3x3 {
                    weight,
                    bias,
                    stride,
                } => conv2d(x, weight, bias, *stride, 1, layer.activation)?,
                Op::Depthwise {
                    weight,
                    bias,
                    stride,
                } => depthwise3x3(x, weight, bias, *stride, layer.activation)?,
                Op::Pointwise { weight, bias } => pointwise(x, weight, bias, layer.activation)?,
                Op::Add => add_activate(x, get(layer.inputs[1])?, layer.activation)?,
                Op::Upsample2x => layer.activation.forward(&upsample2x(x)?)?,
                Op::GlobalAveragePool => layer
                    .activation
                    .forward(&x.mean_keepdim(3)?.mean_keepdim(2)?)?,
            };
            record(layer.name.clone());
            for &slot in &layer.inputs {
                if last_use[slot] == i {
                    tensors[slot] = None;
                }
            }
            tensors[i + 1] = Some(y);
        }
        Ok(tensors)
    }
}

impl Program {
    /// When layer `i` is a conv1x1 without activation whose output only the next layer reads,
    /// and that layer adds it to another tensor: the other tensor's slot and the add layer.
    fn residual_after(&self, i: usize, last_use: &[usize]) -> Option<(usize, &Layer)> {
        let layer = &self.layers[i];
        let next = self.layers.get(i + 1)?;
        let own = i + 1;
        if !matches!(layer.op, Op::Pointwise { .. })
            || layer.activation != Activation::None
            || !matches!(next.op, Op::Add)
            || last_use[own] != i + 1
        {
            return None;
        }
        match next.inputs[..] {
            [a, b] if a == own && b != own => Some((b, next)),
            [a, b] if b == own && a != own => Some((a, next)),
            _ => None,
        }
    }
}

impl Module for Program {
    /// Runs every layer; returns the last layer's output. Tensors no later layer reads are
    /// dropped as soon as possible to keep memory flat.
    fn forward(&self, input: &Tensor) -> CandleResult<Tensor> {
        self.run(input, &[], None)?
            .pop()
            .flatten()
            .ok_or_else(|| candle_core::Error::Msg("empty program".into()))
    }
}

/// Random weights for every conv of a program (tests and benchmarks; never shipped).
pub fn random_tensors(specs: &[LayerSpec], seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut tensors = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (cin, cout) = (spec.in_channels, spec.out_channels);
        let shape = match spec.op {
            LayerOp::Conv3x3 => vec![cout, cin, 3, 3],
            LayerOp::Depthwise3x3 => vec![cout, 1, 3, 3],
            LayerOp::Conv1x1 => vec![cout, cin, 1, 1],
            _ => continue,
        };
        let count = shape.iter().product();
        let fan_in = shape[1..].iter().product();
        tensors.push((
            format!("{}.weight", spec.name),
            shape,
            super::model_file::random_values(count, fan_in, seed + 2 * i as u64),
        ));
        let bias = super::model_file::random_values(cout, 100, seed + 2 * i as u64 + 1);
        tensors.push((format!("{}.bias", spec.name), vec![cout], bias));
    }
    tensors
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn spec(
        name: &str,
        op: &str,
        input: &[&str],
        cin: usize,
        cout: usize,
        stride: usize,
        act: &str,
    ) -> LayerSpec {
        LayerSpec {
            name: name.into(),
            op: serde_json::from_value(serde_json::json!(op)).unwrap(),
            input: match input {
                [one] => LayerInput::One(one.to_string()),
                [a, b] => LayerInput::Two([a.to_string(), b.to_string()]),
                _ => unreachable!(),
            },
            in_channels: cin,
            out_channels: cout,
            stride,
            act: serde_json::from_value(serde_json::json!(act)).unwrap(),
        }
    }

    /// The program for `specs` with seeded random weights, its file (kept alive by the folder)
    /// and the weights themselves.
    struct Built {
        program: Program,
        file: ModelFile,
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
        _dir: tempfile::TempDir,
    }

    fn build(specs: &[LayerSpec], seed: u64) -> Built {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let tensors = random_tensors(specs, seed);
        super::super::model_file::write_model(&path, &tensors, Default::default()).unwrap();
        let file = ModelFile::open(&path, &Device::Cpu).unwrap();
        let program = Program::new(specs, &file).unwrap();
        Built {
            program,
            file,
            tensors,
            _dir: dir,
        }
    }

    impl Built {
        /// Layer `name` as candle's own conv2d + bias (the reference).
        fn conv(&self, x: &Tensor, name: &str, pad: usize, stride: usize, groups: usize) -> Tensor {
            let t = |tensor: &str| {
                let shape = &self.tensors.iter().find(|t| t.0 == tensor).unwrap().1;
                self.file.tensor(tensor, shape).unwrap()
            };
            let y = x
                .conv2d(&t(&format!("{name}.weight")), pad, stride, 1, groups)
                .unwrap();
            let b = t(&format!("{name}.bias"));
            let c = b.dim(0).unwrap();
            y.broadcast_add(&b.reshape((1, c, 1, 1)).unwrap()).unwrap()
        }
    }

    use crate::vision::ops::tests::max_abs_diff;

    #[test]
    fn program_runs_its_layers_like_candle_does() {
        let specs = vec![
            spec("stem", "conv3x3", &["input"], 3, 8, 2, "relu"),
            spec("dw", "dwconv3x3", &["stem"], 8, 8, 2, "relu"),
            spec("pw", "conv1x1", &["dw"], 8, 8, 1, "none"),
            spec("up", "upsample2x", &["pw"], 8, 8, 1, "none"),
            spec("sum", "add", &["stem", "up"], 8, 8, 1, "relu"),
            spec("head", "conv1x1", &["sum"], 8, 4, 1, "none"),
        ];
        let built = build(&specs, 3);
        let program = &built.program;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16, 24), &Device::Cpu).unwrap();
        let got = program.forward(&x).unwrap();

        let stem = built.conv(&x, "stem", 1, 2, 1).relu().unwrap();
        let dw = built.conv(&stem, "dw", 1, 2, 8).relu().unwrap();
        let pw = built.conv(&dw, "pw", 0, 1, 1);
        let up = pw.upsample_nearest2d(8, 12).unwrap();
        let sum = (&stem + up).unwrap().relu().unwrap();
        let want = built.conv(&sum, "head", 0, 1, 1);
        assert_eq!(got.dims(), &[2, 4, 8, 12]);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "{diff}");

        // Named outputs: an intermediate tensor survives even though later layers consumed it.
        let outs = program.forward_outputs(&x, &["stem", "head"]).unwrap();
        let stem_diff = max_abs_diff(&outs[0], &stem);
        assert!(stem_diff < 1e-4, "{stem_diff}");
        assert_eq!(outs[1].dims(), &[2, 4, 8, 12]);
        assert!(program.has_output("sum") && !program.has_output("input"));
        assert!(program.forward_outputs(&x, &["nope"]).is_err());
    }

    #[test]
    fn a_1x1_conv_then_add_runs_fused_and_matches_the_two_layers() {
        let specs = vec![
            spec("stem", "conv3x3", &["input"], 3, 8, 1, "relu"),
            spec("pw1", "conv1x1", &["stem"], 8, 8, 1, "none"),
            spec("res1", "add", &["pw1", "stem"], 8, 8, 1, "relu"),
            spec("pw2", "conv1x1", &["res1"], 8, 8, 1, "none"),
            spec("res2", "add", &["res1", "pw2"], 8, 8, 1, "none"),
        ];
        let built = build(&specs, 5);
        let program = &built.program;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 11), &Device::Cpu).unwrap();
        let stem = built.conv(&x, "stem", 1, 1, 1).relu().unwrap();
        let pw1 = built.conv(&stem, "pw1", 0, 1, 1);
        let res1 = (&pw1 + &stem).unwrap().relu().unwrap();
        let res2 = (&res1 + built.conv(&res1, "pw2", 0, 1, 1)).unwrap();
        let diff = max_abs_diff;
        assert!(program.residual_after(1, &[0, 2, 2, 4, 4, 9]).is_some());
        let got = program.forward(&x).unwrap();
        assert!(diff(&got, &res2) < 1e-4, "{}", diff(&got, &res2));
        // A conv output somebody asked for is not fused away.
        let outs = program.forward_outputs(&x, &["pw1", "res2"]).unwrap();
        assert!(diff(&outs[0], &pw1) < 1e-4);
        assert!(diff(&outs[1], &res2) < 1e-4);
        // Layer timings: one entry per pass the interpreter makes, fused pairs as one.
        let times = program.layer_times(&x).unwrap();
        let names: Vec<&str> = times.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stem", "pw1+add", "pw2+add"]);
        assert!(times.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0));
    }

    #[test]
    fn global_average_pool_then_1x1_is_a_linear_layer_on_the_channel_means() {
        let specs = vec![
            spec("pool", "gap", &["input"], 3, 3, 1, "none"),
            spec("embed", "conv1x1", &["pool"], 3, 2, 1, "none"),
        ];
        let built = build(&specs, 5);
        let (program, tensors) = (&built.program, &built.tensors);
        let x = Tensor::randn(0f32, 1.0, (1, 3, 4, 6), &Device::Cpu).unwrap();
        let got: Vec<f32> = program
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let means: Vec<f32> = x
            .mean((2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (w, b) = (&tensors[0].2, &tensors[1].2);
        for o in 0..2 {
            let want: f32 = (0..3).map(|c| w[o * 3 + c] * means[c]).sum::<f32>() + b[o];
            assert!((got[o] - want).abs() < 1e-4, "{} vs {want}", got[o]);
        }
    }

    #[test]
    fn program_errors_name_the_layer() {
        let specs = vec![spec("a", "conv1x1", &["nothing"], 3, 4, 1, "relu")];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        super::super::model_file::write_model(
            &path,
            &random_tensors(&specs, 1),
            Default::default(),
        )
        .unwrap();
        let file = ModelFile::open(&path, &Device::Cpu).unwrap();
        let err = Program::new(&specs, &file).err().unwrap().to_string();
        assert!(err.contains("layer a") && err.contains("nothing"), "{err}");
        // ops and activations are enums: a layer list naming others does not parse
        for (op, act) in [("softmax", "none"), ("conv1x1", "gelu")] {
            let layer = serde_json::json!({"name": "a", "op": op, "input": "input", "in": 3,
                "out": 3, "act": act});
            let err = serde_json::from_value::<LayerSpec>(layer)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(if op == "softmax" { op } else { act }),
                "{err}"
            );
        }
        // an op with the wrong inputs is refused by name
        let specs = vec![spec("c", "add", &["input"], 3, 3, 1, "none")];
        let err = Program::new(&specs, &file).err().unwrap().to_string();
        assert!(err.contains("layer c") && err.contains("Add"), "{err}");
        // the depthwise kernel takes strides 1 and 2 only
        let specs = vec![spec("b", "dwconv3x3", &["input"], 3, 3, 3, "relu")];
        let err = Program::new(&specs, &file).err().unwrap().to_string();
        assert!(err.contains("layer b") && err.contains("stride 3"), "{err}");
    }
}
