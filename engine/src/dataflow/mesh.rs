//! The rings of a job's exchanges ([`ExchangeRegistry`]) and what travels
//! through them ([`Message`]).
//!
//! Shared by every subtask through the job's environment, so it depends on
//! nothing of the dataflow but the record type: the exchange operators in
//! [`super::exchange`] take their endpoints from here.

use crate::data::ExchangeData;
use crate::net::channel::{TypedInbound, TypedOutbound};
use crate::net::wire::ChannelId;
use crate::net::{ChannelHost, Route};
use crate::park::Parker;
use crate::ring::{channel, ChannelReceiver, ChannelSender};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) use crate::message::Message;

/// The rings of every exchange of a job, created by whichever subtask asks
/// first and handed out to the others (each takes its row of senders and its
/// column of receivers).
///
/// In a cluster job the mesh spans every process's subtasks: a channel
/// between two local subtasks is a ring as always; one that crosses to or
/// from another process is a ring whose far end the data plane owns
/// ([`crate::net`]), which drains it into frames or fills it from them; one
/// between two remote subtasks does not exist here.
pub(crate) struct ExchangeRegistry {
    meshes: Mutex<HashMap<usize, Box<dyn Any + Send>>>,
    /// Subtasks of the whole job (every process).
    parallelism: usize,
    ring_capacity: usize,
    /// What carries channels between processes: the data plane of a
    /// cluster job, or the simulator's links.
    net: Option<Arc<dyn ChannelHost>>,
    /// Every subtask's parker (a remote subtask's is its link writer's).
    parkers: Vec<Arc<Parker>>,
}

struct Mesh<T> {
    senders: Vec<Option<Vec<ChannelSender<Message<T>>>>>,
    receivers: Vec<Vec<Option<ChannelReceiver<Message<T>>>>>,
}

impl ExchangeRegistry {
    pub(crate) fn new(
        parallelism: usize,
        ring_capacity: usize,
        net: Option<Arc<dyn ChannelHost>>,
        parkers: Vec<Arc<Parker>>,
    ) -> Self {
        Self {
            meshes: Mutex::new(HashMap::new()),
            parallelism,
            ring_capacity,
            net,
            parkers,
        }
    }

    /// The channels of exchange `id` for `subtask`: to every receiver, and
    /// from every sender (indexed by the peer subtask).
    #[allow(clippy::type_complexity)]
    pub(crate) fn endpoints<T: ExchangeData>(
        &self,
        id: usize,
        subtask: usize,
    ) -> (
        Vec<ChannelSender<Message<T>>>,
        Vec<ChannelReceiver<Message<T>>>,
    ) {
        let mut meshes = self.meshes.lock().expect("exchange registry lock");
        let p = self.parallelism;
        let entry = meshes.entry(id).or_insert_with(|| {
            let mut senders: Vec<Vec<ChannelSender<Message<T>>>> =
                (0..p).map(|_| Vec::new()).collect();
            let mut receivers: Vec<Vec<Option<ChannelReceiver<Message<T>>>>> =
                (0..p).map(|_| (0..p).map(|_| None).collect()).collect();
            for (from, row) in senders.iter_mut().enumerate() {
                for (to, column) in receivers.iter_mut().enumerate() {
                    let wire = ChannelId {
                        exchange: id as u32,
                        from: from as u32,
                        to: to as u32,
                    };
                    let route = self.net.as_ref().map_or(Route::Ring, |n| n.route(from, to));
                    let net = self.net.as_ref();
                    match (route, net) {
                        (Route::Out, Some(net)) => {
                            let (tx, rx) = channel(self.ring_capacity);
                            let sender = self.parkers[from].notifier();
                            net.add_outbound(wire, Box::new(TypedOutbound::new(wire, rx, sender)));
                            row.push(tx);
                        }
                        (Route::In, Some(net)) => {
                            let (tx, rx) = channel(self.ring_capacity);
                            let receiver = self.parkers[to].notifier();
                            net.add_inbound(wire, Box::new(TypedInbound::new(wire, tx, receiver)));
                            column[from] = Some(rx);
                        }
                        (Route::Across, Some(net)) => {
                            // Two rings and a link between them.
                            let (tx, rx) = channel(self.ring_capacity);
                            let sender = self.parkers[from].notifier();
                            net.add_outbound(wire, Box::new(TypedOutbound::new(wire, rx, sender)));
                            row.push(tx);
                            let (tx, rx) = channel(self.ring_capacity);
                            let receiver = self.parkers[to].notifier();
                            net.add_inbound(wire, Box::new(TypedInbound::new(wire, tx, receiver)));
                            column[from] = Some(rx);
                        }
                        (Route::Elsewhere, _) => {}
                        _ => {
                            let (tx, rx) = channel(self.ring_capacity);
                            row.push(tx);
                            column[from] = Some(rx);
                        }
                    }
                }
            }
            Box::new(Mesh {
                senders: senders.into_iter().map(Some).collect(),
                receivers,
            })
        });
        let mesh = entry.downcast_mut::<Mesh<T>>().expect(
            "exchange types differ between subtasks: the build closure must build the same dataflow on every subtask",
        );
        let senders = mesh.senders[subtask]
            .take()
            .expect("exchange endpoints taken twice");
        let receivers = mesh.receivers[subtask]
            .iter_mut()
            .map(|r| r.take().expect("exchange endpoints taken twice"))
            .collect();
        (senders, receivers)
    }
}
