//! Who may receive on a partition of a consumer group, as Event Hubs decides it (IoT Hub's
//! built-in endpoint is an Event Hub):
//!
//! - at most five receivers at once on one partition of one consumer group ("Azure Event Hubs
//!   quotas and limits": "Number of non-epoch receivers per consumer group: 5"). The sixth is
//!   refused `amqp:resource-limit-exceeded`, naming the receivers connected by their
//!   `com.microsoft:receiver-name` (`nil` for one that gave none): "Exceeded the maximum number of
//!   allowed receivers per partition in a consumer group which is 5. List of connected receivers -
//!   nil, nil, nil, nil, nil." (MicrosoftDocs/azure-docs #24985 with the Python SDK;
//!   Azure/azure-sdk-for-java #38117, Azure/azure-sdk-for-net #33938);
//! - epoch (owner level) receivers, `com.microsoft:epoch` on the attach: one with an epoch at
//!   least every other's takes the partition, and the receivers there are detached
//!   `amqp:link:stolen` ("New receiver '…' with higher epoch of '5' is created hence current
//!   receiver '…' with epoch '4' is getting disconnected. …": Azure/azure-event-hubs-node #158,
//!   Azure/azure-event-hubs-dotnet #403; an equal epoch displaces too: Azure/azure-sdk-for-rust
//!   #4807); one with a lower epoch is refused ("Receiver 'nil' with a higher epoch '1' already
//!   exists. Receiver 'nil' with epoch 0 cannot be created. …", an IoT Hub's built-in endpoint in
//!   Azure/azure-sdk-for-java #26583), and so is a receiver without an epoch while an epoch
//!   receiver holds the partition ("At least one receiver for the endpoint is created with epoch
//!   of '0', and so non-epoch receiver is not allowed. …", an IoT Hub in Azure/iothub-explorer #57).
//!   All three are `amqp:link:stolen`, which the SDKs raise as `ReceiverDisconnectedError`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Most receivers without an epoch one partition of one consumer group serves at once.
pub const MAX_PER_PARTITION: usize = 5;

/// A partition of a consumer group: the group's name in lower case, the partition.
type PartitionKey = (String, u32);

/// A receiver on a partition.
struct Receiver {
    /// Its id here.
    id: u64,
    /// The name it gave itself.
    name: Option<String>,
    /// Its epoch, if it has one.
    epoch: Option<i64>,
    /// Tells it that it was displaced, and why.
    displace: watch::Sender<Option<String>>,
}

/// Who receives on which partition of which consumer group, across the hub's AMQP connections.
#[derive(Default)]
pub struct PartitionReaders {
    /// The receivers on each partition of each group that has any.
    reading: Mutex<HashMap<PartitionKey, Vec<Receiver>>>,
    /// The id the next receiver gets.
    next_id: AtomicU64,
}

/// Why a receiver may not read a partition.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Five receivers read it already (`amqp:resource-limit-exceeded`).
    Full(String),
    /// An epoch receiver holds it (`amqp:link:stolen`).
    Held(String),
}

/// A receiver's place on a partition, given back when it is dropped.
pub struct Reading {
    readers: Arc<PartitionReaders>,
    key: PartitionKey,
    id: u64,
    displaced: watch::Receiver<Option<String>>,
}

/// How a receiver is named in Event Hubs' texts.
fn shown(name: Option<&str>) -> &str {
    name.unwrap_or("nil")
}

impl PartitionReaders {
    /// Takes a place for receiver `name` with `epoch` on `partition` of consumer group `group`
    /// (matched without regard to case, as Event Hubs names are), displacing the receivers an
    /// epoch outranks, or says why not in Event Hubs' words.
    pub fn join(
        self: &Arc<Self>,
        group: &str,
        partition: u32,
        name: Option<String>,
        epoch: Option<i64>,
    ) -> Result<Reading, Refusal> {
        let key = (group.to_lowercase(), partition);
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        let there = reading.entry(key.clone()).or_default();
        let holder = there.iter().find(|r| r.epoch.is_some());
        match (epoch, holder) {
            (None, Some(holder)) => {
                return Err(Refusal::Held(format!(
                    "At least one receiver for the endpoint is created with epoch of '{}', and \
                     so non-epoch receiver is not allowed. Either reconnect with a higher epoch, \
                     or make sure all epoch receivers are closed or disconnected.",
                    holder.epoch.unwrap_or_default()
                )));
            }
            (Some(new), Some(holder)) if holder.epoch.is_some_and(|held| held > new) => {
                return Err(Refusal::Held(format!(
                    "Receiver '{}' with a higher epoch '{}' already exists. Receiver '{}' with \
                     epoch {new} cannot be created. Make sure you are creating receiver with \
                     increasing epoch value to ensure connectivity, or ensure all old epoch \
                     receivers are closed or disconnected.",
                    shown(holder.name.as_deref()),
                    holder.epoch.unwrap_or_default(),
                    shown(name.as_deref())
                )));
            }
            (Some(new), _) => {
                for displaced in there.drain(..) {
                    let old_epoch = displaced.epoch.map_or("nil".to_owned(), |e| e.to_string());
                    let _ = displaced.displace.send(Some(format!(
                        "New receiver '{}' with higher epoch of '{new}' is created hence current \
                         receiver '{}' with epoch '{old_epoch}' is getting disconnected. If you \
                         are recreating the receiver, make sure a higher epoch is used.",
                        shown(name.as_deref()),
                        shown(displaced.name.as_deref())
                    )));
                }
            }
            (None, None) if there.len() >= MAX_PER_PARTITION => {
                let names: Vec<&str> = there.iter().map(|r| shown(r.name.as_deref())).collect();
                return Err(Refusal::Full(format!(
                    "Exceeded the maximum number of allowed receivers per partition in a \
                     consumer group which is {MAX_PER_PARTITION}. List of connected receivers - \
                     {}.",
                    names.join(", ")
                )));
            }
            (None, None) => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (displace, displaced) = watch::channel(None);
        there.push(Receiver {
            id,
            name,
            epoch,
            displace,
        });
        Ok(Reading {
            readers: self.clone(),
            key,
            id,
            displaced,
        })
    }

    /// How many receivers `partition` of `group` serves now.
    #[cfg(test)]
    fn count(&self, group: &str, partition: u32) -> usize {
        let reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        reading
            .get(&(group.to_lowercase(), partition))
            .map_or(0, Vec::len)
    }
}

impl Reading {
    /// Resolves when a receiver with an epoch at least this one's takes the partition, with
    /// the text to detach this receiver with; never resolves otherwise.
    pub async fn displaced(&mut self) -> String {
        // the partition sends before it forgets a receiver: a closed channel has its reason
        let why = match self.displaced.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut reading = self
            .readers
            .reading
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(there) = reading.get_mut(&self.key) {
            there.retain(|r| r.id != self.id);
            if there.is_empty() {
                reading.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `reading` was displaced with, if anything yet.
    fn displaced(reading: &Reading) -> Option<String> {
        reading.displaced.borrow().clone()
    }

    #[test]
    fn a_sixth_receiver_on_a_partition_of_a_group_is_refused_naming_the_five() {
        let readers = Arc::new(PartitionReaders::default());
        let mut held: Vec<Reading> = (0..4)
            .map(|_| readers.join("$Default", 1, None, None).unwrap())
            .collect();
        held.push(
            readers
                .join("$default", 1, Some("r5".into()), None)
                .unwrap(),
        );
        let refused = readers.join("$DEFAULT", 1, Some("r6".into()), None).err();
        assert_eq!(
            refused,
            Some(Refusal::Full(
                "Exceeded the maximum number of allowed receivers per partition in a consumer \
                 group which is 5. List of connected receivers - nil, nil, nil, nil, r5."
                    .into()
            ))
        );
        // other partitions and other groups are counted apart
        let _other_partition = readers.join("$Default", 2, None, None).unwrap();
        let _other_group = readers.join("alerts", 1, None, None).unwrap();
        assert_eq!(readers.count("$Default", 1), 5);
    }

    #[test]
    fn a_receiver_that_goes_frees_its_place() {
        let readers = Arc::new(PartitionReaders::default());
        let mut held: Vec<Reading> = (0..5)
            .map(|_| readers.join("g", 0, None, None).unwrap())
            .collect();
        assert!(readers.join("g", 0, None, None).is_err());
        held.remove(2);
        assert_eq!(readers.count("g", 0), 4);
        let again = readers.join("g", 0, None, None).unwrap();
        assert_eq!(readers.count("g", 0), 5);
        drop(again);
        drop(held);
        assert_eq!(readers.count("g", 0), 0);
        assert!(readers.reading.lock().unwrap().is_empty());
    }

    #[test]
    fn an_epoch_receiver_displaces_the_receivers_there_and_then_holds_the_partition() {
        let readers = Arc::new(PartitionReaders::default());
        let plain = readers.join("g", 0, Some("plain".into()), None).unwrap();
        let other_partition = readers.join("g", 1, None, None).unwrap();
        let first = readers.join("g", 0, Some("a".into()), Some(4)).unwrap();
        assert_eq!(
            displaced(&plain).unwrap(),
            "New receiver 'a' with higher epoch of '4' is created hence current receiver 'plain' \
             with epoch 'nil' is getting disconnected. If you are recreating the receiver, make \
             sure a higher epoch is used."
        );
        assert_eq!(displaced(&other_partition), None);
        assert_eq!(
            readers.count("g", 0),
            1,
            "the displaced one is gone at once"
        );
        drop(plain);

        // without an epoch, or with a lower one: refused
        assert_eq!(
            readers.join("g", 0, None, None).err(),
            Some(Refusal::Held(
                "At least one receiver for the endpoint is created with epoch of '4', and so \
                 non-epoch receiver is not allowed. Either reconnect with a higher epoch, or make \
                 sure all epoch receivers are closed or disconnected."
                    .into()
            ))
        );
        assert_eq!(
            readers.join("g", 0, None, Some(3)).err(),
            Some(Refusal::Held(
                "Receiver 'a' with a higher epoch '4' already exists. Receiver 'nil' with epoch 3 \
                 cannot be created. Make sure you are creating receiver with increasing epoch \
                 value to ensure connectivity, or ensure all old epoch receivers are closed or \
                 disconnected."
                    .into()
            ))
        );
        assert_eq!(displaced(&first), None);

        // an equal epoch displaces, as a higher one does
        let second = readers.join("g", 0, Some("b".into()), Some(4)).unwrap();
        assert!(displaced(&first)
            .unwrap()
            .starts_with("New receiver 'b' with higher epoch of '4' is created hence current receiver 'a' with epoch '4'"));
        drop(first);
        assert_eq!(displaced(&second), None);
        assert_eq!(readers.count("g", 0), 1);

        // once the epoch receiver goes, receivers without one are welcome again
        drop(second);
        let _plain_again = readers.join("g", 0, None, None).unwrap();
    }
}
