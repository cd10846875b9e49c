//! Stream: live animation to VTuber tools over the VMC protocol (OSC over UDP), one target port
//! per person (the first at the base address, +1 per further person), one OSC bundle per person
//! per processed frame. A person keeps their port while tracked; once the tracker drops them it
//! goes to the next newcomer, so ports stay within base … base + people in view, at most
//! [`MAX_PORTS`], however many people come and go.
//!
//! Coordinates: VMC uses Unity's left-handed space (x right, y up, z forward); our rotations are
//! right-handed with the avatar facing +z, so a rotation (x, y, z, w) is sent as (−x, −y, z, w).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};

use anyhow::{Context, Result};
use rosc::{OscBundle, OscMessage, OscPacket, OscTime, OscType};

use crate::retarget::{arkit_weights, head_rotation, Retargeter, ARKIT_52};
use crate::track::{Person, TrackState};

/// Which names expressions are sent under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BlendNames {
    /// ARKit's 52 (`eyeBlinkLeft`, `jawOpen`, …), as iFacialMocap-style receivers expect.
    Arkit,
    /// VRM 0.x presets (`A`, `I`, `U`, `E`, `O`, `Blink`, `Blink_L`, `Joy`, …).
    Vrm,
}

/// VRM 0.x blend shape presets, as VMC receivers name them.
pub const VRM0_PRESETS: [&str; 17] = [
    "A",
    "I",
    "U",
    "E",
    "O",
    "Blink",
    "Blink_L",
    "Blink_R",
    "Joy",
    "Angry",
    "Sorrow",
    "Fun",
    "Surprised",
    "LookUp",
    "LookDown",
    "LookLeft",
    "LookRight",
];

/// Ports streamed to at most (base … base + MAX_PORTS − 1); people beyond are not streamed.
pub const MAX_PORTS: u16 = 64;

/// The receiver of `name`'s route, `target` = "host:port" (the error names the person).
pub fn resolve_route(name: &str, target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("VMC route of {name}: {target:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("VMC route of {name}: {target:?} resolves to nothing"))
}

/// Every route's receiver (name → "host:port" as the settings keep them).
pub fn resolve_routes(routes: &BTreeMap<String, String>) -> Result<BTreeMap<String, SocketAddr>> {
    routes
        .iter()
        .map(|(name, target)| Ok((name.clone(), resolve_route(name, target)?)))
        .collect()
}

pub struct VmcStreamer {
    socket: UdpSocket,
    base: SocketAddr,
    names: BlendNames,
    retargeter: Retargeter,
    /// Person ID → port offset, for the people tracked now (not those routed by name).
    slots: BTreeMap<u32, u16>,
    /// Receivers by person name: a named person listed here always goes there.
    routes: BTreeMap<String, SocketAddr>,
    /// Mirror the head like a mirror image (what people expect when watching themselves).
    pub mirror: bool,
}

impl VmcStreamer {
    /// Streams to `target` ("host:port"; default VMC port 39539).
    pub fn new(target: &str, names: BlendNames) -> Result<VmcStreamer> {
        let base = target
            .to_socket_addrs()
            .with_context(|| format!("{target:?} is not a HOST:PORT address"))?
            .next()
            .with_context(|| format!("{target:?} resolves to no address"))?;
        let bind = if base.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).context("opening a UDP socket for VMC streaming")?;
        let targets: Vec<String> = match names {
            BlendNames::Arkit => ARKIT_52.iter().map(|s| s.to_string()).collect(),
            BlendNames::Vrm => VRM0_PRESETS.iter().map(|s| s.to_string()).collect(),
        };
        let (retargeter, _) = Retargeter::by_name(&targets);
        Ok(VmcStreamer {
            socket,
            base,
            names,
            retargeter,
            slots: BTreeMap::new(),
            routes: BTreeMap::new(),
            mirror: true,
        })
    }

    /// Streams the people named in `routes` to their own receivers (name → "host:port");
    /// an address that does not resolve is an error naming the person.
    pub fn with_routes(mut self, routes: &BTreeMap<String, String>) -> Result<VmcStreamer> {
        self.set_routes(resolve_routes(routes)?);
        Ok(self)
    }

    /// Replaces the receivers by name (while streaming: from the next frame on).
    pub fn set_routes(&mut self, routes: BTreeMap<String, SocketAddr>) {
        self.routes = routes;
    }

    /// Where `person` is streamed to: their name's receiver, else their port.
    fn destination(&mut self, person: &Person) -> Option<SocketAddr> {
        match person.name.as_ref().and_then(|n| self.routes.get(n)) {
            Some(&address) => Some(address),
            None => self.address_of(person.id),
        }
    }

    pub fn names(&self) -> BlendNames {
        self.names
    }

    /// Where person `id` is streamed to: their port, else the lowest free one (`None` when all
    /// [`MAX_PORTS`] are taken).
    pub fn address_of(&mut self, id: u32) -> Option<SocketAddr> {
        let offset = match self.slots.get(&id) {
            Some(&offset) => offset,
            None => {
                let taken: BTreeSet<u16> = self.slots.values().copied().collect();
                let free = (0..MAX_PORTS).find(|o| !taken.contains(o))?;
                self.slots.insert(id, free);
                free
            }
        };
        Some(SocketAddr::new(
            self.base.ip(),
            self.base.port().wrapping_add(offset),
        ))
    }

    /// Ports in use (one per person tracked and streamed).
    pub fn ports_in_use(&self) -> usize {
        self.slots.len()
    }

    /// The bundle for one person at `time_s`.
    pub fn bundle(&self, person: &Person, time_s: f64) -> OscPacket {
        let message = |addr: &str, args: Vec<OscType>| {
            OscPacket::Message(OscMessage {
                addr: addr.to_string(),
                args,
            })
        };
        let q = head_rotation(&person.smoothed.rotation, self.mirror);
        let (qx, qy, qz, qw) = (-q.x, -q.y, q.z, q.w);
        let bone = |name: &str, (x, y, z, w): (f32, f32, f32, f32)| {
            message(
                "/VMC/Ext/Bone/Pos",
                vec![
                    OscType::String(name.into()),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(x),
                    OscType::Float(y),
                    OscType::Float(z),
                    OscType::Float(w),
                ],
            )
        };
        let mut content = vec![
            message("/VMC/Ext/OK", vec![OscType::Int(1)]),
            message("/VMC/Ext/T", vec![OscType::Float(time_s as f32)]),
            message(
                "/VMC/Ext/Root/Pos",
                vec![
                    OscType::String("root".into()),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(0.0),
                    OscType::Float(1.0),
                ],
            ),
            bone("Head", (qx, qy, qz, qw)),
            bone("Neck", (0.0, 0.0, 0.0, 1.0)),
        ];
        let weights = arkit_weights(&person.smoothed.blendshapes);
        // The eyes from the eyeLook weights, turned into Unity's frame as the head is (and
        // swapped and mirrored with it when mirroring).
        let gaze = crate::retarget::EyeGaze::from_arkit(&weights);
        let (left, right) = if self.mirror {
            let flip = |[yaw, pitch]: [f32; 2]| [-yaw, pitch];
            (flip(gaze.right), flip(gaze.left))
        } else {
            (gaze.left, gaze.right)
        };
        for (name, angles) in [("LeftEye", left), ("RightEye", right)] {
            let q = crate::retarget::EyeGaze::rotation(angles);
            content.push(bone(name, (-q.x, -q.y, q.z, q.w)));
        }
        for (name, value) in self.retargeter.apply(&weights) {
            content.push(message(
                "/VMC/Ext/Blend/Val",
                vec![OscType::String(name), OscType::Float(value)],
            ));
        }
        content.push(message("/VMC/Ext/Blend/Apply", vec![]));
        OscPacket::Bundle(OscBundle {
            timetag: OscTime {
                seconds: 0,
                fractional: 1,
            },
            content,
        })
    }

    /// Sends every confirmed person's bundle. A send that fails (receiver gone) is reported but
    /// does not stop tracking. `persons` is everyone tracked: whoever is no longer in it frees
    /// their port.
    pub fn send(&mut self, persons: &[Person], time_s: f64) -> Result<usize> {
        let routes = &self.routes;
        self.slots.retain(|id, _| {
            persons
                .iter()
                .any(|p| p.id == *id && p.name.as_ref().is_none_or(|n| !routes.contains_key(n)))
        });
        let mut sent = 0;
        for person in persons.iter().filter(|p| p.state == TrackState::Confirmed) {
            let Some(address) = self.destination(person) else {
                continue;
            };
            let bytes = rosc::encoder::encode(&self.bundle(person, time_s))
                .context("encoding an OSC bundle")?;
            self.socket
                .send_to(&bytes, address)
                .with_context(|| format!("sending VMC data to {address}"))?;
            sent += 1;
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::FaceObservation;
    use glam::{Mat3, Vec2};
    use std::time::Duration;

    fn person(id: u32, jaw_open: f32) -> Person {
        let mut blendshapes = vec![0.0; 51];
        let jaw = crate::vision::BLENDSHAPE_NAMES
            .iter()
            .position(|n| *n == "jawOpen")
            .unwrap();
        blendshapes[jaw] = jaw_open;
        let face = FaceObservation {
            bbox: (Vec2::ZERO, Vec2::ONE),
            score: 1.0,
            landmarks: vec![Vec2::ZERO; 68],
            rotation: Mat3::from_rotation_y(0.4),
            blendshapes,
        };
        Person {
            id,
            state: TrackState::Confirmed,
            raw: face.clone(),
            smoothed: face,
            pose: None,
            fit_rms_px: 0.0,
            name: None,
        }
    }

    fn receive(socket: &UdpSocket) -> Vec<OscMessage> {
        let mut buffer = [0u8; 65536];
        let (n, _) = socket.recv_from(&mut buffer).expect("a VMC packet arrives");
        let (_, packet) = rosc::decoder::decode_udp(&buffer[..n]).unwrap();
        let OscPacket::Bundle(bundle) = packet else {
            panic!("VMC frames are bundles")
        };
        bundle
            .content
            .into_iter()
            .map(|p| match p {
                OscPacket::Message(m) => m,
                OscPacket::Bundle(_) => panic!("no nested bundles"),
            })
            .collect()
    }

    #[test]
    fn loopback_receiver_decodes_names_and_values_per_person_port() {
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let second = UdpSocket::bind(("127.0.0.1", port + 1)).ok();
        for s in [Some(&first), second.as_ref()].into_iter().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let mut streamer = VmcStreamer::new(&format!("127.0.0.1:{port}"), BlendNames::Vrm).unwrap();
        let people = [person(7, 0.6), person(9, 0.2)];
        assert_eq!(streamer.send(&people, 1.5).unwrap(), 2);

        let messages = receive(&first);
        let addrs: Vec<&str> = messages.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(
            &addrs[..5],
            [
                "/VMC/Ext/OK",
                "/VMC/Ext/T",
                "/VMC/Ext/Root/Pos",
                "/VMC/Ext/Bone/Pos",
                "/VMC/Ext/Bone/Pos"
            ]
        );
        assert_eq!(addrs.last(), Some(&"/VMC/Ext/Blend/Apply"));
        assert_eq!(messages[1].args, vec![OscType::Float(1.5)]);
        let value = |name: &str| {
            messages
                .iter()
                .find(|m| {
                    m.addr == "/VMC/Ext/Blend/Val" && m.args[0] == OscType::String(name.into())
                })
                .map(|m| m.args[1].clone())
        };
        assert_eq!(
            value("A"),
            Some(OscType::Float(0.6)),
            "person 7 on the base port"
        );
        assert_eq!(value("Blink"), Some(OscType::Float(0.0)));
        // The head turned 0.4 rad about y, mirrored and converted to Unity's handedness.
        let OscType::Float(qy) = messages[3].args[5] else {
            panic!()
        };
        assert!((qy - (0.2f32).sin()).abs() < 1e-5, "qy {qy}");
        assert_eq!(messages[3].args[0], OscType::String("Head".into()));

        if let Some(second) = second {
            let messages = receive(&second);
            let a = messages
                .iter()
                .find(|m| m.args.first() == Some(&OscType::String("A".into())))
                .unwrap();
            assert_eq!(a.args[1], OscType::Float(0.2), "person 9 on base port + 1");
        }
    }

    #[test]
    fn arkit_style_sends_all_52_names() {
        let streamer = VmcStreamer::new("127.0.0.1:39539", BlendNames::Arkit).unwrap();
        let OscPacket::Bundle(bundle) = streamer.bundle(&person(1, 0.3), 0.0) else {
            panic!()
        };
        let blends = bundle
            .content
            .iter()
            .filter(|p| matches!(p, OscPacket::Message(m) if m.addr == "/VMC/Ext/Blend/Val"))
            .count();
        assert_eq!(blends, 52);
        assert!(VmcStreamer::new("not an address", BlendNames::Arkit).is_err());
    }

    #[test]
    fn people_coming_and_going_reuse_the_first_ports() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let mut streamer = VmcStreamer::new(&format!("127.0.0.1:{port}"), BlendNames::Vrm).unwrap();
        // 1,500 people, three in view at a time, a new one every frame
        for frame in 0..1500u32 {
            let people: Vec<Person> = (0..3).map(|k| person(frame + k, 0.1)).collect();
            streamer.send(&people, frame as f64 / 30.0).unwrap();
            assert_eq!(streamer.ports_in_use(), 3, "frame {frame}");
            for p in &people {
                let offset = streamer.address_of(p.id).unwrap().port() - port;
                assert!(offset < 3, "frame {frame}: person {} on +{offset}", p.id);
            }
        }
        // a crowd larger than the ports: the first MAX_PORTS are streamed
        let crowd: Vec<Person> = (0..MAX_PORTS as u32 + 10)
            .map(|id| person(id, 0.0))
            .collect();
        assert_eq!(streamer.send(&crowd, 100.0).unwrap(), MAX_PORTS as usize);
        assert_eq!(streamer.ports_in_use(), MAX_PORTS as usize);
    }

    #[test]
    fn a_named_person_always_goes_to_their_receiver_and_others_keep_the_port_rule() {
        let base = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ana_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&base, &ana_rx] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let port = base.local_addr().unwrap().port();
        let routes =
            BTreeMap::from([("Ana".to_string(), ana_rx.local_addr().unwrap().to_string())]);
        let mut streamer = VmcStreamer::new(&format!("127.0.0.1:{port}"), BlendNames::Vrm)
            .unwrap()
            .with_routes(&routes)
            .unwrap();
        // Ana has the lowest ID, yet the unnamed person gets the base port
        let mut ana = person(3, 0.9);
        ana.name = Some("Ana".into());
        let ben = person(8, 0.1);
        assert_eq!(streamer.send(&[ana, ben], 0.0).unwrap(), 2);
        let jaw = |messages: Vec<OscMessage>| {
            messages
                .into_iter()
                .find(|m| {
                    m.addr == "/VMC/Ext/Blend/Val" && m.args[0] == OscType::String("A".into())
                })
                .map(|m| m.args[1].clone())
        };
        assert!(jaw(receive(&ana_rx)).is_some(), "Ana's receiver hears Ana");
        assert!(
            jaw(receive(&base)).is_some(),
            "the base port hears the other person"
        );
        assert_eq!(
            streamer.ports_in_use(),
            1,
            "a routed person takes no port slot"
        );
        assert_eq!(streamer.address_of(8).unwrap().port(), port);
        let bad = BTreeMap::from([("Ana".to_string(), "not an address".to_string())]);
        let e = VmcStreamer::new("127.0.0.1:39539", BlendNames::Vrm)
            .unwrap()
            .with_routes(&bad)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("Ana"));
    }

    #[test]
    fn routes_changed_while_streaming_apply_from_the_next_frame() {
        let base = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ana_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&base, &ana_rx] {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        let port = base.local_addr().unwrap().port();
        let mut streamer = VmcStreamer::new(&format!("127.0.0.1:{port}"), BlendNames::Vrm).unwrap();
        let mut ana = person(3, 0.9);
        ana.name = Some("Ana".into());
        streamer.send(std::slice::from_ref(&ana), 0.0).unwrap();
        assert!(!receive(&base).is_empty(), "unrouted: the base port");
        let routes =
            BTreeMap::from([("Ana".to_string(), ana_rx.local_addr().unwrap().to_string())]);
        streamer.set_routes(resolve_routes(&routes).unwrap());
        streamer.send(std::slice::from_ref(&ana), 0.1).unwrap();
        assert!(!receive(&ana_rx).is_empty(), "routed: her receiver");
        streamer.set_routes(BTreeMap::new());
        streamer.send(std::slice::from_ref(&ana), 0.2).unwrap();
        assert!(
            !receive(&base).is_empty(),
            "route removed: the base port again"
        );
        let mut buffer = [0u8; 65536];
        assert!(
            ana_rx.recv_from(&mut buffer).is_err(),
            "and nothing more to her receiver"
        );
        let e = resolve_route("Ben", "nowhere").unwrap_err();
        assert!(format!("{e:#}").contains("Ben"), "{e:#}");
    }
}
