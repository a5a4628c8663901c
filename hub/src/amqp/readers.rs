//! Event Hubs' limit on receivers: at most five at once on one partition of one consumer group
//! ("Azure Event Hubs quotas and limits": "Number of non-epoch receivers per consumer group: 5";
//! IoT Hub's built-in endpoint is an Event Hub and has it too). The sixth receiver is refused
//! with `amqp:resource-limit-exceeded` and Event Hubs' words, naming the receivers connected by
//! their `com.microsoft:receiver-name` (`nil` for a receiver that gave none): "Exceeded the
//! maximum number of allowed receivers per partition in a consumer group which is 5. List of
//! connected receivers - nil, nil, nil, nil, nil." (MicrosoftDocs/azure-docs #24985 with the
//! Python SDK; Azure/azure-sdk-for-java #38117, Azure/azure-sdk-for-net #33938, where .NET maps it
//! to `QuotaExceeded`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most receivers one partition of one consumer group serves at once.
pub const MAX_PER_PARTITION: usize = 5;

/// A partition of a consumer group: the group's name in lower case, the partition.
type PartitionKey = (String, u32);

/// A receiver on a partition: its id here, and the name it gave itself.
type Receiver = (u64, Option<String>);

/// Who receives on which partition of which consumer group, across the hub's AMQP connections.
#[derive(Default)]
pub struct PartitionReaders {
    /// The receivers on each partition of each group that has any.
    reading: Mutex<HashMap<PartitionKey, Vec<Receiver>>>,
    /// The id the next receiver gets.
    next_id: AtomicU64,
}

/// A receiver's place on a partition, given back when it is dropped.
pub struct Reading {
    readers: Arc<PartitionReaders>,
    key: PartitionKey,
    id: u64,
}

impl PartitionReaders {
    /// Takes a place for receiver `name` on `partition` of consumer group `group` (matched
    /// without regard to case, as Event Hubs names are), or says why not: Event Hubs' error
    /// description, naming the receivers there.
    pub fn join(
        self: &Arc<Self>,
        group: &str,
        partition: u32,
        name: Option<String>,
    ) -> Result<Reading, String> {
        let key = (group.to_lowercase(), partition);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        let there = reading.entry(key.clone()).or_default();
        if there.len() >= MAX_PER_PARTITION {
            let names: Vec<&str> = there
                .iter()
                .map(|(_, name)| name.as_deref().unwrap_or("nil"))
                .collect();
            return Err(format!(
                "Exceeded the maximum number of allowed receivers per partition in a consumer \
                 group which is {MAX_PER_PARTITION}. List of connected receivers - {}.",
                names.join(", ")
            ));
        }
        there.push((id, name));
        Ok(Reading {
            readers: self.clone(),
            key,
            id,
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

impl Drop for Reading {
    fn drop(&mut self) {
        let mut reading = self
            .readers
            .reading
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(there) = reading.get_mut(&self.key) {
            there.retain(|(id, _)| *id != self.id);
            if there.is_empty() {
                reading.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sixth_receiver_on_a_partition_of_a_group_is_refused_naming_the_five() {
        let readers = Arc::new(PartitionReaders::default());
        let mut held: Vec<Reading> = (0..4)
            .map(|_| readers.join("$Default", 1, None).unwrap())
            .collect();
        held.push(readers.join("$default", 1, Some("r5".into())).unwrap());
        let refused = readers
            .join("$DEFAULT", 1, Some("r6".into()))
            .err()
            .unwrap();
        assert_eq!(
            refused,
            "Exceeded the maximum number of allowed receivers per partition in a consumer group \
             which is 5. List of connected receivers - nil, nil, nil, nil, r5."
        );
        // other partitions and other groups are counted apart
        let _other_partition = readers.join("$Default", 2, None).unwrap();
        let _other_group = readers.join("alerts", 1, None).unwrap();
        assert_eq!(readers.count("$Default", 1), 5);
    }

    #[test]
    fn a_receiver_that_goes_frees_its_place() {
        let readers = Arc::new(PartitionReaders::default());
        let mut held: Vec<Reading> = (0..5)
            .map(|_| readers.join("g", 0, None).unwrap())
            .collect();
        assert!(readers.join("g", 0, None).is_err());
        held.remove(2);
        assert_eq!(readers.count("g", 0), 4);
        let again = readers.join("g", 0, None).unwrap();
        assert_eq!(readers.count("g", 0), 5);
        drop(again);
        drop(held);
        assert_eq!(readers.count("g", 0), 0);
        assert!(readers.reading.lock().unwrap().is_empty());
    }
}
