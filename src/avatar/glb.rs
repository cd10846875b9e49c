//! A small glTF 2.0 binary (.glb) writer: buffers, accessors (dense and sparse), meshes with
//! named morph targets, materials, nodes and animations. Used by the default-avatar generator
//! and by recorded takes; the output passes the Khronos glTF validator.

use serde_json::{json, Value};

/// glTF component types and buffer-view targets.
const FLOAT: u32 = 5126;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;

/// Builds one glTF document with a single binary buffer.
#[derive(Default)]
pub struct GlbBuilder {
    bin: Vec<u8>,
    buffer_views: Vec<Value>,
    accessors: Vec<Value>,
    pub meshes: Vec<Value>,
    pub materials: Vec<Value>,
    pub nodes: Vec<Value>,
    pub animations: Vec<Value>,
    pub scene_nodes: Vec<usize>,
    /// Top-level `extensions` / `extensionsUsed` (VRM files in tests).
    pub extensions: serde_json::Map<String, Value>,
    pub extensions_used: Vec<String>,
}

impl GlbBuilder {
    pub fn new() -> GlbBuilder {
        GlbBuilder::default()
    }

    fn push_view(&mut self, bytes: &[u8], target: Option<u32>) -> usize {
        while self.bin.len() % 4 != 0 {
            self.bin.push(0);
        }
        let mut view =
            json!({"buffer": 0, "byteOffset": self.bin.len(), "byteLength": bytes.len()});
        if let Some(t) = target {
            view["target"] = json!(t);
        }
        self.bin.extend_from_slice(bytes);
        self.buffer_views.push(view);
        self.buffer_views.len() - 1
    }

    fn push_accessor(&mut self, accessor: Value) -> usize {
        self.accessors.push(accessor);
        self.accessors.len() - 1
    }

    /// VEC3 float vertex data (positions get min/max, which glTF requires).
    pub fn vec3(&mut self, data: &[[f32; 3]], min_max: bool) -> usize {
        let bytes: Vec<u8> = data
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = self.push_view(&bytes, Some(ARRAY_BUFFER));
        let mut a = json!({"bufferView": view, "componentType": FLOAT, "count": data.len(), "type": "VEC3"});
        if min_max {
            let (min, max) = bounds3(data);
            a["min"] = json!(min);
            a["max"] = json!(max);
        }
        self.push_accessor(a)
    }

    pub fn vec2(&mut self, data: &[[f32; 2]]) -> usize {
        let bytes: Vec<u8> = data
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = self.push_view(&bytes, Some(ARRAY_BUFFER));
        self.push_accessor(
            json!({"bufferView": view, "componentType": FLOAT, "count": data.len(), "type": "VEC2"}),
        )
    }

    pub fn indices(&mut self, data: &[u32]) -> usize {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = self.push_view(&bytes, Some(ELEMENT_ARRAY_BUFFER));
        self.push_accessor(
            json!({"bufferView": view, "componentType": UNSIGNED_INT, "count": data.len(), "type": "SCALAR"}),
        )
    }

    /// Morph-target position deltas for `count` vertices, stored sparse: only non-zero deltas
    /// are written (most targets move a small part of a mesh; a target moving nothing stores one
    /// zero).
    pub fn sparse_deltas(&mut self, deltas: &[[f32; 3]]) -> usize {
        let mut moved: Vec<(u32, [f32; 3])> = deltas
            .iter()
            .enumerate()
            .filter(|(_, d)| d.iter().any(|v| *v != 0.0))
            .map(|(i, d)| (i as u32, *d))
            .collect();
        if moved.is_empty() && !deltas.is_empty() {
            // one explicit zero: readers (the gltf crate among them) want data behind an accessor
            moved.push((0, [0.0; 3]));
        }
        let (min, max) = bounds3(deltas);
        let mut a = json!({"componentType": FLOAT, "count": deltas.len(), "type": "VEC3",
                           "min": min, "max": max});
        if !moved.is_empty() {
            let idx: Vec<u8> = moved.iter().flat_map(|(i, _)| i.to_le_bytes()).collect();
            let val: Vec<u8> = moved
                .iter()
                .flat_map(|(_, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
                .collect();
            let iv = self.push_view(&idx, None);
            let vv = self.push_view(&val, None);
            a["sparse"] = json!({"count": moved.len(),
                                 "indices": {"bufferView": iv, "componentType": UNSIGNED_INT},
                                 "values": {"bufferView": vv}});
        }
        self.push_accessor(a)
    }

    /// Animation input (times) or output (values) of `components` floats per key.
    pub fn floats(&mut self, data: &[f32], kind: &str, min_max: bool) -> usize {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = self.push_view(&bytes, None);
        let per = match kind {
            "VEC4" => 4,
            "VEC3" => 3,
            _ => 1,
        };
        let mut a = json!({"bufferView": view, "componentType": FLOAT, "count": data.len() / per, "type": kind});
        if min_max {
            let min = data.iter().copied().fold(f32::INFINITY, f32::min);
            let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            a["min"] = json!([min]);
            a["max"] = json!([max]);
        }
        self.push_accessor(a)
    }

    pub fn add_node(&mut self, node: Value) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The whole document as JSON (buffer length filled in).
    pub fn document(&self) -> Value {
        let mut doc = json!({
            "asset": {"version": "2.0", "generator": concat!("polyface ", env!("CARGO_PKG_VERSION"))},
            "scene": 0,
            "scenes": [{"nodes": self.scene_nodes}],
            "nodes": self.nodes,
            "buffers": [{"byteLength": padded(self.bin.len())}],
            "bufferViews": self.buffer_views,
            "accessors": self.accessors,
        });
        for (key, list) in [
            ("meshes", &self.meshes),
            ("materials", &self.materials),
            ("animations", &self.animations),
        ] {
            if !list.is_empty() {
                doc[key] = json!(list);
            }
        }
        if !self.extensions.is_empty() {
            doc["extensions"] = Value::Object(self.extensions.clone());
            doc["extensionsUsed"] = json!(self.extensions_used);
        }
        doc
    }

    /// The .glb bytes (the gltf crate's container writer: JSON chunk space padded, BIN chunk
    /// zero padded).
    pub fn to_glb(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.document()).expect("JSON values serialise");
        let glb = gltf::binary::Glb {
            // the writer computes the length itself
            header: gltf::binary::Header {
                magic: *b"glTF",
                version: 2,
                length: 0,
            },
            json: std::borrow::Cow::Owned(json),
            bin: (!self.bin.is_empty()).then_some(std::borrow::Cow::Borrowed(self.bin.as_slice())),
        };
        glb.to_vec().expect("writing into memory does not fail")
    }
}

fn padded(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn bounds3(data: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let mut min = [f32::INFINITY; 3];
    let mut max = [f32::NEG_INFINITY; 3];
    for p in data {
        for k in 0..3 {
            min[k] = min[k].min(p[k]);
            max[k] = max[k].max(p[k]);
        }
    }
    if data.is_empty() {
        return ([0.0; 3], [0.0; 3]);
    }
    (min, max)
}

/// sRGB colour (0..1) to the linear values glTF's baseColorFactor wants.
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glb_round_trips_through_the_gltf_crate_with_sparse_targets() {
        let mut b = GlbBuilder::new();
        let positions = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let pos = b.vec3(&positions, true);
        let idx = b.indices(&[0, 1, 2]);
        let t0 = b.sparse_deltas(&[[0.0; 3], [0.0, 0.5, 0.0], [0.0; 3]]);
        let t1 = b.sparse_deltas(&[[0.0; 3]; 3]);
        b.meshes.push(
            json!({"primitives": [{"attributes": {"POSITION": pos}, "indices": idx,
            "targets": [{"POSITION": t0}, {"POSITION": t1}]}],
            "extras": {"targetNames": ["lift", "nothing"]}}),
        );
        let node = b.add_node(json!({"mesh": 0, "name": "Head"}));
        b.scene_nodes.push(node);
        let bytes = b.to_glb();
        assert_eq!(bytes.len() % 4, 0);
        let (doc, buffers, _) = gltf::import_slice(&bytes).unwrap();
        let mesh = doc.meshes().next().unwrap();
        let prim = mesh.primitives().next().unwrap();
        let reader = prim.reader(|b| Some(&buffers[b.index()]));
        let targets: Vec<Vec<[f32; 3]>> = reader
            .read_morph_targets()
            .map(|(p, _, _)| p.unwrap().collect())
            .collect();
        assert_eq!(targets[0][1], [0.0, 0.5, 0.0]);
        assert_eq!(targets[0][0], [0.0; 3]);
        assert_eq!(targets[1], vec![[0.0; 3]; 3]);
    }

    #[test]
    fn srgb_conversion_hits_known_points() {
        assert_eq!(srgb_to_linear(0.0), 0.0);
        assert!((srgb_to_linear(1.0) - 1.0).abs() < 1e-6);
        assert!((srgb_to_linear(0.5) - 0.214).abs() < 1e-3);
    }
}
