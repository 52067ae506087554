//! Unit tests of keyed state tables and handles.

use super::*;

struct Scope(u64, usize);
impl KeyScope<u64> for Scope {
    fn current_key(&self) -> &u64 {
        &self.0
    }
    fn key_group_index(&self) -> usize {
        self.1
    }
}

#[test]
fn handles_are_scoped_to_the_current_key() {
    let mut reg = StateRegistry::<u64>::new(KeyGroupRange { start: 0, end: 4 }, true, None);
    let count = reg.value_state::<u64>("count");
    let seen = reg.map_state::<String, u32>("seen");
    let log = reg.list_state::<i32>("log");
    let a = Scope(1, 0);
    let b = Scope(2, 3);
    count.update(&a, || 0, |c| *c += 5);
    count.update(&a, || 0, |c| *c += 1);
    assert_eq!(count.get(&a), Some(6));
    assert_eq!(count.get(&b), None);
    seen.insert(&b, "x".into(), 7);
    assert_eq!(seen.get(&b, &"x".into()), Some(7));
    assert!(!seen.contains(&a, &"x".into()));
    assert_eq!(seen.remove(&b, &"x".into()), Some(7));
    assert_eq!(
        reg.tables()[1].borrow().keys_in_group(3),
        0,
        "empty map dropped"
    );
    log.add(&a, 1);
    log.add(&a, 2);
    log.update(&a, |l| l.retain(|v| *v > 1));
    assert_eq!(log.get(&a), vec![2]);
    assert_eq!(reg.tables()[0].borrow().keys_in_group(0), 1);
    assert_eq!(count.clear(&a), Some(6));
}

/// Large entries live densely (`StateMap::Dense`): a seeded run of sets,
/// updates and removals agrees with a model, and so do a snapshot restored
/// into another table and a delta of changed and removed keys.
#[test]
fn dense_tables_agree_with_a_model_through_snapshots_and_deltas() {
    use std::collections::BTreeMap;
    type Wide = [u64; 15];
    let range = KeyGroupRange { start: 0, end: 2 };
    let mut reg = StateRegistry::<u64>::new(range, false, None);
    let values = reg.value_state::<Wide>("wide");
    let table = reg.tables()[0].clone();
    assert!(matches!(
        StateMap::<u64, Wide>::default(),
        StateMap::Dense(_)
    ));
    assert!(matches!(
        StateMap::<u64, u64>::default(),
        StateMap::Slots(_)
    ));
    let mut rng = crate::rng::SplitMix64::new(7);
    let mut model: BTreeMap<u64, Wide> = BTreeMap::new();
    let scope = |key: u64| Scope(key, (key % 2) as usize);
    for step in 0..5_000u64 {
        let key = rng.below(300);
        match rng.below(4) {
            0 => {
                assert_eq!(values.clear(&scope(key)), model.remove(&key));
            }
            1 => {
                values.set(&scope(key), [step; 15]);
                model.insert(key, [step; 15]);
            }
            _ => {
                values.update(&scope(key), || [0; 15], |v| v[key as usize % 15] += 1);
                model.entry(key).or_insert([0; 15])[key as usize % 15] += 1;
            }
        }
    }
    let contents = |t: &dyn StateTable, index: usize| t.keys_in_group(index);
    for index in 0..2 {
        let expected = model.keys().filter(|k| (*k % 2) as usize == index).count();
        assert_eq!(contents(&*table.borrow(), index), expected);
    }
    for (&key, value) in &model {
        assert_eq!(values.get(&scope(key)).as_ref(), Some(value));
    }
    // A snapshot of each group restored into a fresh table holds the same.
    let mut copy = KeyedTable::<u64, Wide>::new("copy", range, false, None);
    for index in 0..2 {
        let archive = table.borrow().snapshot_group(index).unwrap();
        copy.restore_group(index, &archive).unwrap();
    }
    for (&key, value) in &model {
        assert_eq!(copy.read(&scope(key)).get(&key), Some(value));
    }
    // A delta: some keys changed, some removed, one new.
    let upserts: Vec<(u64, Wide)> = vec![(1, [9; 15]), (1_000, [8; 15])];
    let deletes: Vec<u64> = model.keys().copied().filter(|k| k % 7 == 1).collect();
    let delta = rkyv::to_bytes::<RkyvError>(&(
        upserts
            .iter()
            .filter(|(k, _)| k % 2 == 1)
            .cloned()
            .collect::<Vec<_>>(),
        deletes
            .iter()
            .copied()
            .filter(|k| k % 2 == 1)
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    copy.restore_delta(1, &delta).unwrap();
    for key in deletes.iter().filter(|k| *k % 2 == 1) {
        model.remove(key);
    }
    for (k, v) in upserts {
        model.insert(k, v);
    }
    let group: BTreeMap<u64, Wide> = copy.read_group(1).iter().map(|(k, v)| (*k, *v)).collect();
    let odd: BTreeMap<u64, Wide> = model.into_iter().filter(|(k, _)| k % 2 == 1).collect();
    assert_eq!(group, odd);
}

/// A table's memory follows its layout: at 2048 keys of 128 bytes a table
/// of slots has just doubled (4096 slots), a dense one holds each entry once
/// plus its hash and index.
#[test]
fn memory_bytes_counts_slots_or_entries_and_index() {
    type Wide = [u64; 15];
    let entry = std::mem::size_of::<(u64, Wide)>();
    let mut slots = StateMap::Slots(FxHashMap::default());
    let mut dense = StateMap::<u64, Wide>::default();
    assert_eq!((slots.memory_bytes(), dense.memory_bytes()), (0, 0));
    for key in 0..2048u64 {
        slots.insert(key, [key; 15]);
        dense.insert(key, [key; 15]);
    }
    assert_eq!(slots.memory_bytes(), 4096 * (entry + 1));
    assert_eq!(dense.memory_bytes(), 2048 * (entry + 8) + 4096 * (8 + 1));
}

/// Writes to frozen key groups archive whole groups only while their archives
/// fit in the allowance; after that a write keeps the written key's value at
/// the cut, and the group is archived later as it was at the cut.
#[test]
fn writes_archive_frozen_groups_only_within_the_copy_allowance() {
    let range = KeyGroupRange { start: 0, end: 4 };
    let mut table = KeyedTable::<u64, u64>::new("t", range, false, None);
    for index in 0..4usize {
        for key in 0..8u64 {
            table
                .touched(&Scope(key * 4 + index as u64, index))
                .insert(key * 4 + index as u64, 1);
        }
    }
    for index in 0..4 {
        table.freeze(index, 1, 0, false);
    }
    // One byte allows one archive: the first write archives group 0, the
    // next writes keep values per entry.
    table.set_copy_allowance(1);
    for index in 0..4usize {
        *table
            .touched(&Scope(index as u64, index))
            .get_mut(&(index as u64))
            .unwrap() = 2;
    }
    let on_write = table.take_serialized();
    assert_eq!(on_write.len(), 1, "only the first write archives its group");
    assert_eq!(on_write[0].as_ref().unwrap().index, 0);
    assert_eq!(table.frozen_groups(), 3);
    assert_eq!(table.serialize_frozen(usize::MAX), 3);
    // Every archive holds the group at the cut: the old value 1 everywhere.
    for archived in on_write.into_iter().chain(table.take_serialized()) {
        let archived = archived.unwrap();
        let entries = rkyv::from_bytes::<Vec<(u64, u64)>, RkyvError>(&archived.bytes).unwrap();
        assert_eq!(entries.len(), 8, "group {}", archived.index);
        assert!(
            entries.iter().all(|(_, v)| *v == 1),
            "group {} at the cut",
            archived.index
        );
    }
    // Without a bound every first write archives its group.
    for index in 0..4 {
        table.freeze(index, 2, 1, false);
    }
    table.set_copy_allowance(usize::MAX);
    for index in 0..4usize {
        table.touched(&Scope(index as u64, index));
    }
    assert_eq!(table.take_serialized().len(), 4);
}
