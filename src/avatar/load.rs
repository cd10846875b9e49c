//! glTF / VRM loading with the `gltf` crate, checked so that a broken file is an error, never a
//! panic: accessor ranges are verified before reading, indices against vertex counts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use glam::{Mat4, Vec3};
use serde_json::Value;

use super::{AlphaMode, Avatar, Expression, Primitive, Target};

#[derive(Debug, thiserror::Error)]
pub enum AvatarError {
    #[error("{path}: cannot read the avatar file: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name}: not a valid glTF/VRM file: {problem}")]
    Format { name: String, problem: String },
    #[error("{name}: {problem}")]
    Content { name: String, problem: String },
}

/// Upper bound on vertices per primitive (a guard against absurd or hostile files).
const MAX_VERTICES: usize = 4_000_000;

pub fn load(path: &Path) -> Result<Avatar, AvatarError> {
    let bytes = std::fs::read(path).map_err(|source| AvatarError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    from_bytes(&bytes, path.parent(), &name).map_err(|e| match e {
        AvatarError::Format { problem, .. } => AvatarError::Format {
            name: path.display().to_string(),
            problem,
        },
        AvatarError::Content { problem, .. } => AvatarError::Content {
            name: path.display().to_string(),
            problem,
        },
        other => other,
    })
}

pub fn from_bytes(bytes: &[u8], base: Option<&Path>, name: &str) -> Result<Avatar, AvatarError> {
    // The checks below should make panics impossible; this keeps a missed case an error too.
    match std::panic::catch_unwind(|| parse(bytes, base, name)) {
        Ok(result) => result,
        Err(_) => Err(AvatarError::Format {
            name: name.into(),
            problem: "malformed data (the reader gave up)".into(),
        }),
    }
}

fn format_error(name: &str, problem: impl ToString) -> AvatarError {
    // validators list every broken accessor; the first few say enough
    let mut problem = problem.to_string();
    if problem.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| problem.is_char_boundary(i))
            .unwrap_or(0);
        problem.truncate(cut);
        problem.push_str(" ...");
    }
    AvatarError::Format {
        name: name.into(),
        problem,
    }
}

/// The GLB header's own sanity (the gltf crate underflows on a declared length below 12).
fn check_glb_header(bytes: &[u8], name: &str) -> Result<(), AvatarError> {
    if !bytes.starts_with(b"glTF") {
        return Ok(());
    }
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    match word(8) {
        Some(length) if length >= 20 && length <= bytes.len() => Ok(()),
        Some(length) => Err(format_error(
            name,
            format!(
                "GLB header says {length} bytes, the file has {}",
                bytes.len()
            ),
        )),
        None => Err(format_error(name, "GLB header cut short")),
    }
}

fn parse(bytes: &[u8], base: Option<&Path>, name: &str) -> Result<Avatar, AvatarError> {
    check_glb_header(bytes, name)?;
    let gltf = gltf::Gltf::from_slice(bytes).map_err(|e| format_error(name, e))?;
    let raw_json: Value = if bytes.starts_with(b"glTF") {
        let glb = gltf::Glb::from_slice(bytes).map_err(|e| format_error(name, e))?;
        serde_json::from_slice(&glb.json).map_err(|e| format_error(name, e))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| format_error(name, e))?
    };
    let document = gltf.document;
    let buffers = gltf::import_buffers(&document, base, gltf.blob)
        .map_err(|e| format_error(name, format!("buffer: {e}")))?;
    let images = if document.images().len() > 0 {
        gltf::import_images(&document, base, &buffers)
            .map_err(|e| format_error(name, format!("texture: {e}")))?
    } else {
        Vec::new()
    };
    let extensions = raw_json.get("extensions").cloned().unwrap_or(Value::Null);
    let head_node = find_head(&document, &extensions);

    // morph names: per mesh, then one global index by name
    let mut morph_names: Vec<String> = Vec::new();
    let mut mesh_morphs: Vec<Vec<usize>> = Vec::new();
    for mesh in document.meshes() {
        let count = mesh
            .primitives()
            .map(|p| p.morph_targets().len())
            .max()
            .unwrap_or(0);
        let names = target_names(&raw_json, mesh.index(), count);
        let mut table = Vec::with_capacity(count);
        for n in names {
            let i = morph_names.iter().position(|m| *m == n).unwrap_or_else(|| {
                morph_names.push(n.clone());
                morph_names.len() - 1
            });
            table.push(i);
        }
        mesh_morphs.push(table);
    }

    // world transforms and head membership from the scene graph
    let scene = document
        .default_scene()
        .or_else(|| document.scenes().next())
        .ok_or_else(|| format_error(name, "no scene"))?;
    let mut world: HashMap<usize, Mat4> = HashMap::new();
    let mut under_head: HashMap<usize, bool> = HashMap::new();
    let mut stack: Vec<(gltf::Node, Mat4, bool, usize)> = scene
        .nodes()
        .map(|n| (n, Mat4::IDENTITY, false, 0))
        .collect();
    while let Some((node, parent, parent_head, depth)) = stack.pop() {
        if depth > 256 || world.contains_key(&node.index()) {
            return Err(format_error(
                name,
                "node hierarchy has a cycle or is too deep",
            ));
        }
        let m = parent * Mat4::from_cols_array_2d(&node.transform().matrix());
        let is_head = parent_head || Some(node.index()) == head_node;
        world.insert(node.index(), m);
        under_head.insert(node.index(), is_head);
        for child in node.children() {
            stack.push((child, m, is_head, depth + 1));
        }
    }
    let head_pivot = head_node
        .and_then(|h| world.get(&h))
        .map(|m| m.w_axis.truncate());

    let mut primitives = Vec::new();
    for node in scene_nodes(&document, &world) {
        let Some(mesh) = node.mesh() else { continue };
        let transform = world[&node.index()];
        let skinned = node.skin();
        let normal_matrix = glam::Mat3::from_mat4(transform).inverse().transpose();
        for prim in mesh.primitives() {
            if prim.mode() != gltf::mesh::Mode::Triangles {
                continue;
            }
            let get = |b: gltf::Buffer| buffers.get(b.index()).map(|d| &d.0[..]);
            let reader = prim.reader(get);
            let pos_acc = prim
                .get(&gltf::Semantic::Positions)
                .ok_or_else(|| format_error(name, format!("mesh {}: no POSITION", mesh.index())))?;
            check_accessor(name, &pos_acc, &buffers)?;
            let count = pos_acc.count();
            if count > MAX_VERTICES {
                return Err(format_error(
                    name,
                    format!("{count} vertices in one primitive"),
                ));
            }
            for (_, acc) in prim.attributes() {
                check_accessor(name, &acc, &buffers)?;
                if acc.count() != count {
                    return Err(format_error(
                        name,
                        "attribute counts differ within a primitive",
                    ));
                }
            }
            let local: Vec<[f32; 3]> = reader
                .read_positions()
                .ok_or_else(|| format_error(name, "POSITION cannot be read"))?
                .collect();
            // skinned meshes are authored in the bind pose = rest pose (VRM): keep them as-is
            let to_world = if skinned.is_some() {
                Mat4::IDENTITY
            } else {
                transform
            };
            let nm = if skinned.is_some() {
                glam::Mat3::IDENTITY
            } else {
                normal_matrix
            };
            let positions: Vec<[f32; 3]> = local
                .iter()
                .map(|p| to_world.transform_point3(Vec3::from(*p)).to_array())
                .collect();
            let indices: Vec<u32> = match prim.indices() {
                Some(acc) => {
                    check_accessor(name, &acc, &buffers)?;
                    let idx: Vec<u32> = reader
                        .read_indices()
                        .ok_or_else(|| format_error(name, "indices cannot be read"))?
                        .into_u32()
                        .collect();
                    if idx.iter().any(|&i| i as usize >= count) {
                        return Err(format_error(name, "an index points past the vertices"));
                    }
                    idx
                }
                None => (0..count as u32).collect(),
            };
            let indices: Vec<u32> = indices[..indices.len() - indices.len() % 3].to_vec();
            let normals = match reader.read_normals() {
                Some(n) => n
                    .map(|n| (nm * Vec3::from(n)).normalize_or(Vec3::Y).to_array())
                    .collect(),
                None => smooth_normals(&positions, &indices),
            };
            let uvs: Vec<[f32; 2]> = match reader.read_tex_coords(0) {
                Some(t) => t.into_f32().collect(),
                None => vec![[0.0, 0.0]; count],
            };
            let head_weight = match (&skinned, head_node) {
                (_, None) => vec![1.0; count],
                (Some(skin), Some(_)) => {
                    let joint_is_head: Vec<bool> = skin
                        .joints()
                        .map(|j| under_head.get(&j.index()).copied().unwrap_or(false))
                        .collect();
                    match (reader.read_joints(0), reader.read_weights(0)) {
                        (Some(j), Some(w)) => j
                            .into_u16()
                            .zip(w.into_f32())
                            .map(|(j, w)| {
                                (0..4)
                                    .filter(|&k| joint_is_head.get(j[k] as usize) == Some(&true))
                                    .map(|k| w[k])
                                    .sum::<f32>()
                                    .clamp(0.0, 1.0)
                            })
                            .collect(),
                        _ => vec![0.0; count],
                    }
                }
                (None, Some(_)) => {
                    let h = if under_head.get(&node.index()) == Some(&true) {
                        1.0
                    } else {
                        0.0
                    };
                    vec![h; count]
                }
            };
            let mut targets = Vec::new();
            for target in prim.morph_targets() {
                if let Some(acc) = target.positions() {
                    check_accessor(name, &acc, &buffers)?;
                    if acc.count() != count {
                        return Err(format_error(
                            name,
                            "a morph target has the wrong vertex count",
                        ));
                    }
                }
            }
            for (t, (pos, _, _)) in reader.read_morph_targets().enumerate() {
                let Some(pos) = pos else { continue };
                let lin = glam::Mat3::from_mat4(to_world);
                let deltas: Vec<[f32; 3]> = pos.map(|d| (lin * Vec3::from(d)).to_array()).collect();
                if deltas.iter().all(|d| *d == [0.0; 3]) {
                    continue;
                }
                let morph = mesh_morphs
                    .get(mesh.index())
                    .and_then(|m| m.get(t))
                    .copied()
                    .ok_or_else(|| format_error(name, "more morph targets than names"))?;
                targets.push(Target {
                    morph,
                    position_deltas: deltas,
                });
            }
            let material = prim.material();
            let pbr = material.pbr_metallic_roughness();
            let texture = match pbr.base_color_texture() {
                Some(info) => {
                    let index = info.texture().source().index();
                    let data = images
                        .get(index)
                        .ok_or_else(|| format_error(name, "missing texture image"))?;
                    Some(to_rgba(name, data)?)
                }
                None => None,
            };
            let alpha = match material.alpha_mode() {
                gltf::material::AlphaMode::Opaque => AlphaMode::Opaque,
                gltf::material::AlphaMode::Mask => {
                    AlphaMode::Mask(material.alpha_cutoff().unwrap_or(0.5))
                }
                gltf::material::AlphaMode::Blend => AlphaMode::Blend,
            };
            primitives.push(Primitive {
                positions,
                normals,
                uvs,
                head_weight,
                indices,
                base_color: pbr.base_color_factor(),
                texture,
                alpha,
                targets,
            });
        }
    }
    if primitives.is_empty() {
        return Err(AvatarError::Content {
            name: name.into(),
            problem: "no triangle meshes in the default scene".into(),
        });
    }
    let expressions = vrm_expressions(&extensions, &document, &mesh_morphs);
    let bounds = bounds_of(primitives.iter().flat_map(|p| p.positions.iter().copied()));
    let head_bounds = bounds_of(primitives.iter().flat_map(|p| {
        p.positions
            .iter()
            .zip(&p.head_weight)
            .filter(|(_, w)| **w > 0.5)
            .map(|(q, _)| *q)
    }));
    let head_bounds = if head_bounds.0.x.is_finite() {
        head_bounds
    } else {
        bounds
    };
    let head_pivot = head_pivot.unwrap_or_else(|| {
        Vec3::new(
            (bounds.0.x + bounds.1.x) / 2.0,
            bounds.0.y,
            (bounds.0.z + bounds.1.z) / 2.0,
        )
    });
    Ok(Avatar {
        name: name.into(),
        primitives,
        morph_names,
        expressions,
        head_pivot,
        has_head: head_node.is_some(),
        bounds,
        head_bounds,
    })
}

fn scene_nodes<'a>(
    document: &'a gltf::Document,
    world: &HashMap<usize, Mat4>,
) -> Vec<gltf::Node<'a>> {
    let mut nodes: Vec<gltf::Node> = document
        .nodes()
        .filter(|n| world.contains_key(&n.index()))
        .collect();
    nodes.sort_by_key(|n| n.index());
    nodes
}

fn bounds_of(points: impl Iterator<Item = [f32; 3]>) -> (Vec3, Vec3) {
    let mut lo = Vec3::splat(f32::INFINITY);
    let mut hi = Vec3::splat(f32::NEG_INFINITY);
    for p in points {
        let v = Vec3::from(p);
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    (lo, hi)
}

/// Verifies that an accessor's bytes lie inside its buffer view and buffer.
fn check_accessor(
    name: &str,
    a: &gltf::Accessor,
    buffers: &[gltf::buffer::Data],
) -> Result<(), AvatarError> {
    let bad = |what: &str| format_error(name, format!("accessor {}: {what}", a.index()));
    let elem = a.size();
    let view_ok =
        |view: &gltf::buffer::View, offset: usize, stride: usize, count: usize, elem: usize| {
            let buffer = buffers.get(view.buffer().index()).map_or(0, |b| b.0.len());
            let end = view.offset().checked_add(view.length());
            let need = if count == 0 {
                Some(offset)
            } else {
                stride
                    .checked_mul(count - 1)
                    .and_then(|s| s.checked_add(offset))
                    .and_then(|s| s.checked_add(elem))
            };
            matches!((end, need), (Some(end), Some(need)) if end <= buffer && need <= view.length())
        };
    if let Some(view) = a.view() {
        let stride = view.stride().unwrap_or(elem);
        if stride < elem && a.count() > 1 {
            return Err(bad("stride shorter than an element"));
        }
        if !view_ok(&view, a.offset(), stride, a.count(), elem) {
            return Err(bad("data lies outside its buffer"));
        }
    }
    if let Some(sparse) = a.sparse() {
        let n = sparse.count();
        if n > a.count() {
            return Err(bad("more sparse entries than elements"));
        }
        let index_size = match sparse.indices().index_type() {
            gltf::accessor::sparse::IndexType::U8 => 1,
            gltf::accessor::sparse::IndexType::U16 => 2,
            gltf::accessor::sparse::IndexType::U32 => 4,
        };
        let iv = sparse.indices().view();
        if !view_ok(&iv, sparse.indices().offset(), index_size, n, index_size) {
            return Err(bad("sparse indices lie outside their buffer"));
        }
        let vv = sparse.values().view();
        if !view_ok(&vv, sparse.values().offset(), elem, n, elem) {
            return Err(bad("sparse values lie outside their buffer"));
        }
        // every sparse index must address an element
        let data = &buffers[iv.buffer().index()].0;
        let start = iv.offset() + sparse.indices().offset();
        for k in 0..n {
            let at = start + k * index_size;
            let i = match index_size {
                1 => data[at] as usize,
                2 => u16::from_le_bytes([data[at], data[at + 1]]) as usize,
                _ => u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
                    as usize,
            };
            if i >= a.count() {
                return Err(bad("a sparse index points past the elements"));
            }
        }
    }
    Ok(())
}

fn to_rgba(name: &str, data: &gltf::image::Data) -> Result<image::RgbaImage, AvatarError> {
    use gltf::image::Format;
    let (w, h) = (data.width, data.height);
    let px = &data.pixels;
    let rgba: Vec<u8> = match data.format {
        Format::R8G8B8A8 => px.clone(),
        Format::R8G8B8 => px
            .chunks_exact(3)
            .flat_map(|c| [c[0], c[1], c[2], 255])
            .collect(),
        Format::R8 => px.iter().flat_map(|&v| [v, v, v, 255]).collect(),
        Format::R8G8 => px
            .chunks_exact(2)
            .flat_map(|c| [c[0], c[0], c[0], c[1]])
            .collect(),
        other => {
            return Err(format_error(
                name,
                format!("texture format {other:?} is not supported"),
            ))
        }
    };
    image::RgbaImage::from_raw(w, h, rgba)
        .ok_or_else(|| format_error(name, "texture size does not match its data"))
}

fn smooth_normals(positions: &[[f32; 3]], indices: &[u32]) -> Vec<[f32; 3]> {
    let mut acc = vec![Vec3::ZERO; positions.len()];
    for t in indices.chunks_exact(3) {
        let [a, b, c] = [t[0] as usize, t[1] as usize, t[2] as usize];
        let (pa, pb, pc) = (
            Vec3::from(positions[a]),
            Vec3::from(positions[b]),
            Vec3::from(positions[c]),
        );
        let n = (pb - pa).cross(pc - pa);
        for i in [a, b, c] {
            acc[i] += n;
        }
    }
    acc.iter()
        .map(|n| n.normalize_or(Vec3::Y).to_array())
        .collect()
}

/// Morph target names of mesh `index`: `mesh.extras.targetNames`, else the first primitive's
/// `extras.targetNames` (VRM 0.x exporters), else `<mesh>_<i>`.
fn target_names(json: &Value, index: usize, count: usize) -> Vec<String> {
    let mesh = &json["meshes"][index];
    let from = |v: &Value| -> Option<Vec<String>> {
        let list = v.as_array()?;
        Some(
            list.iter()
                .map(|n| n.as_str().unwrap_or("").to_string())
                .collect(),
        )
    };
    let mut names = from(&mesh["extras"]["targetNames"])
        .or_else(|| from(&mesh["primitives"][0]["extras"]["targetNames"]))
        .unwrap_or_default();
    let mesh_name = mesh["name"].as_str().unwrap_or("mesh").to_string();
    names.truncate(count);
    while names.len() < count {
        names.push(format!("{mesh_name}_{}", names.len()));
    }
    for (i, n) in names.iter_mut().enumerate() {
        if n.is_empty() {
            *n = format!("{mesh_name}_{i}");
        }
    }
    names
}

/// The head: VRM 1.0 / 0.x humanoid head bone, else a node named like a head.
fn find_head(document: &gltf::Document, ext: &Value) -> Option<usize> {
    let n = document.nodes().len();
    let valid = |v: Option<u64>| v.map(|i| i as usize).filter(|i| *i < n);
    if let Some(i) = valid(ext["VRMC_vrm"]["humanoid"]["humanBones"]["head"]["node"].as_u64()) {
        return Some(i);
    }
    if let Some(bones) = ext["VRM"]["humanoid"]["humanBones"].as_array() {
        if let Some(i) = bones
            .iter()
            .find(|b| b["bone"] == "head")
            .and_then(|b| valid(b["node"].as_u64()))
        {
            return Some(i);
        }
    }
    let lower = |n: &gltf::Node| n.name().unwrap_or("").to_ascii_lowercase();
    document
        .nodes()
        .find(|node| matches!(lower(node).as_str(), "head" | "j_bip_c_head"))
        .or_else(|| {
            document.nodes().find(|node| {
                let l = lower(node);
                l.contains("head") && !l.contains("end") && !l.contains("top")
            })
        })
        .map(|n| n.index())
}

/// VRM expressions as binds in the global morph index.
fn vrm_expressions(
    ext: &Value,
    document: &gltf::Document,
    mesh_morphs: &[Vec<usize>],
) -> Vec<Expression> {
    let mut out = Vec::new();
    let morph = |mesh: Option<usize>, index: Option<u64>| -> Option<usize> {
        mesh_morphs.get(mesh?)?.get(index? as usize).copied()
    };
    // VRM 1.0: binds name a node (whose mesh holds the target)
    let vrm1 = &ext["VRMC_vrm"]["expressions"];
    for group in ["preset", "custom"] {
        if let Some(map) = vrm1[group].as_object() {
            for (name, def) in map {
                let binds: Vec<(usize, f32)> = def["morphTargetBinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| {
                        let node = document.nodes().nth(b["node"].as_u64()? as usize)?;
                        let m = morph(node.mesh().map(|m| m.index()), b["index"].as_u64())?;
                        Some((m, b["weight"].as_f64().unwrap_or(1.0) as f32))
                    })
                    .collect();
                out.push(Expression {
                    name: name.clone(),
                    binds,
                });
            }
        }
    }
    // VRM 0.x: binds name a mesh; weights are 0..100; preset names are lower-case
    if let Some(groups) = ext["VRM"]["blendShapeMaster"]["blendShapeGroups"].as_array() {
        for g in groups {
            let preset = g["presetName"].as_str().unwrap_or("unknown");
            let name = if preset == "unknown" || preset.is_empty() {
                g["name"].as_str().unwrap_or("").to_string()
            } else {
                preset.to_string()
            };
            if name.is_empty() {
                continue;
            }
            let binds: Vec<(usize, f32)> = g["binds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| {
                    let m = morph(b["mesh"].as_u64().map(|v| v as usize), b["index"].as_u64())?;
                    Some((m, b["weight"].as_f64().unwrap_or(100.0) as f32 / 100.0))
                })
                .collect();
            out.push(Expression { name, binds });
        }
    }
    out
}
