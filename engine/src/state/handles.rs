//! The handles a keyed function reads and writes its state through
//! ([`ValueState`], [`MapState`], [`ListState`]), scoped to the current key,
//! [`KeyGroupState`] (one map per key group, addressed by a [`KeyGroup`]),
//! and the [`StateRegistry`] that declares them.

use super::{FxHashMap, KeyScope, KeyedTable, StateData, StateMap, StateTable};
use crate::keygroup::{Key, KeyGroupRange};
use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Declares the keyed state of one operator. Handed to the factory of a keyed
/// process function; the handles it returns are used in every call.
pub struct StateRegistry<K> {
    range: KeyGroupRange,
    track_changes: bool,
    changed_bytes: Option<Arc<AtomicU64>>,
    tables: Vec<Rc<RefCell<dyn StateTable>>>,
    _key: std::marker::PhantomData<K>,
}

impl<K: Key> StateRegistry<K> {
    pub(crate) fn new(
        range: KeyGroupRange,
        track_changes: bool,
        changed_bytes: Option<Arc<AtomicU64>>,
    ) -> Self {
        Self {
            range,
            track_changes,
            changed_bytes,
            tables: Vec::new(),
            _key: std::marker::PhantomData,
        }
    }

    /// A new table of this operator, keyed by `TK` (the operator's key, or
    /// a key within a key group).
    fn register<TK: Key, V: StateData>(&mut self, name: &str) -> Rc<RefCell<KeyedTable<TK, V>>> {
        assert!(
            self.tables.iter().all(|t| t.borrow().name() != name),
            "keyed state `{name}` declared twice in one operator"
        );
        let table = Rc::new(RefCell::new(KeyedTable::<TK, V>::new(
            name,
            self.range,
            self.track_changes,
            self.changed_bytes.clone(),
        )));
        self.tables.push(table.clone());
        table
    }

    /// A single value per key.
    pub fn value_state<V: StateData>(&mut self, name: &str) -> ValueState<K, V> {
        ValueState {
            table: self.register(name),
        }
    }

    /// A map per key.
    pub fn map_state<UK: StateData + Eq + Hash, UV: StateData>(
        &mut self,
        name: &str,
    ) -> MapState<K, UK, UV>
    where
        UK::Archived: Hash + Eq,
    {
        MapState {
            table: self.register(name),
        }
    }

    /// A list per key.
    pub fn list_state<V: StateData>(&mut self, name: &str) -> ListState<K, V> {
        ListState {
            table: self.register(name),
        }
    }

    /// A map per key group (not per key), for a function that keeps one
    /// structure for all the keys of a key group, such as a window's panes
    /// (see [`KeyGroupState`]).
    pub fn key_group_state<GK: Key, V: StateData>(&mut self, name: &str) -> KeyGroupState<GK, V> {
        KeyGroupState {
            table: self.register(name),
        }
    }

    /// Every table declared so far (for snapshots and inspection).
    pub(crate) fn tables(&self) -> &[Rc<RefCell<dyn StateTable>>] {
        &self.tables
    }

    /// The key-group range the tables cover.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }
}

/// A value per key (Flink's `ValueState`).
pub struct ValueState<K, V> {
    table: Rc<RefCell<KeyedTable<K, V>>>,
}

impl<K, V> Clone for ValueState<K, V> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
        }
    }
}

impl<K: Key, V: StateData> ValueState<K, V> {
    /// The current key's value.
    pub fn get(&self, scope: &impl KeyScope<K>) -> Option<V> {
        self.table
            .borrow_mut()
            .read(scope)
            .get(scope.current_key())
            .cloned()
    }

    /// Reads the current key's value without cloning it.
    pub fn with<R>(&self, scope: &impl KeyScope<K>, f: impl FnOnce(Option<&V>) -> R) -> R {
        f(self.table.borrow_mut().read(scope).get(scope.current_key()))
    }

    /// Sets the current key's value.
    pub fn set(&self, scope: &impl KeyScope<K>, value: V) {
        self.table
            .borrow_mut()
            .touched(scope)
            .insert(scope.current_key().clone(), value);
    }

    /// Updates the current key's value in place, inserting `init()` first if
    /// there is none; the key is cloned only on insert.
    pub fn update<R>(
        &self,
        scope: &impl KeyScope<K>,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        if let Some(value) = map.get_mut(scope.current_key()) {
            return f(value);
        }
        let mut value = init();
        let result = f(&mut value);
        map.insert(scope.current_key().clone(), value);
        result
    }

    /// Removes the current key's value.
    pub fn clear(&self, scope: &impl KeyScope<K>) -> Option<V> {
        self.table
            .borrow_mut()
            .touched(scope)
            .remove(scope.current_key())
    }
}

/// A map per key (Flink's `MapState`).
pub struct MapState<K, UK, UV> {
    table: Rc<RefCell<KeyedTable<K, FxHashMap<UK, UV>>>>,
}

impl<K, UK, UV> Clone for MapState<K, UK, UV> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
        }
    }
}

impl<K: Key, UK: StateData + Eq + Hash, UV: StateData> MapState<K, UK, UV>
where
    UK::Archived: Hash + Eq,
{
    /// The value under `user_key` for the current key.
    pub fn get(&self, scope: &impl KeyScope<K>, user_key: &UK) -> Option<UV> {
        self.table
            .borrow_mut()
            .read(scope)
            .get(scope.current_key())
            .and_then(|m| m.get(user_key).cloned())
    }

    /// Inserts `user_key -> value` for the current key; returns the old value.
    pub fn insert(&self, scope: &impl KeyScope<K>, user_key: UK, value: UV) -> Option<UV> {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        match map.get_mut(scope.current_key()) {
            Some(m) => m.insert(user_key, value),
            None => {
                let mut m = FxHashMap::default();
                m.insert(user_key, value);
                map.insert(scope.current_key().clone(), m);
                None
            }
        }
    }

    /// Updates the value under `user_key` in place, inserting `init()` first.
    pub fn update<R>(
        &self,
        scope: &impl KeyScope<K>,
        user_key: UK,
        init: impl FnOnce() -> UV,
        f: impl FnOnce(&mut UV) -> R,
    ) -> R {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        if !map.contains_key(scope.current_key()) {
            map.insert(scope.current_key().clone(), FxHashMap::default());
        }
        let inner = map
            .get_mut(scope.current_key())
            .expect("inserted just above");
        f(inner.entry(user_key).or_insert_with(init))
    }

    /// Removes `user_key` for the current key; the key's map is dropped when
    /// it becomes empty.
    pub fn remove(&self, scope: &impl KeyScope<K>, user_key: &UK) -> Option<UV> {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        let inner = map.get_mut(scope.current_key())?;
        let old = inner.remove(user_key);
        if inner.is_empty() {
            map.remove(scope.current_key());
        }
        old
    }

    /// Whether the current key has a value under `user_key`.
    pub fn contains(&self, scope: &impl KeyScope<K>, user_key: &UK) -> bool {
        self.table
            .borrow_mut()
            .read(scope)
            .get(scope.current_key())
            .is_some_and(|m| m.contains_key(user_key))
    }

    /// Changes the current key's whole map in place (an empty one if it has
    /// none); the key's map is dropped when `f` leaves it empty.
    pub fn update_all<R>(
        &self,
        scope: &impl KeyScope<K>,
        f: impl FnOnce(&mut FxHashMap<UK, UV>) -> R,
    ) -> R {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        match map.get_mut(scope.current_key()) {
            Some(inner) => {
                let result = f(inner);
                if inner.is_empty() {
                    map.remove(scope.current_key());
                }
                result
            }
            None => {
                let mut inner = FxHashMap::default();
                let result = f(&mut inner);
                if !inner.is_empty() {
                    map.insert(scope.current_key().clone(), inner);
                }
                result
            }
        }
    }

    /// Reads the current key's whole map (empty if none).
    pub fn with<R>(&self, scope: &impl KeyScope<K>, f: impl FnOnce(&FxHashMap<UK, UV>) -> R) -> R {
        let mut table = self.table.borrow_mut();
        match table.read(scope).get(scope.current_key()) {
            Some(m) => f(m),
            None => f(&FxHashMap::default()),
        }
    }

    /// Drops the current key's map.
    pub fn clear(&self, scope: &impl KeyScope<K>) {
        self.table
            .borrow_mut()
            .touched(scope)
            .remove(scope.current_key());
    }
}

/// A list per key (Flink's `ListState`).
pub struct ListState<K, V> {
    table: Rc<RefCell<KeyedTable<K, Vec<V>>>>,
}

impl<K, V> Clone for ListState<K, V> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
        }
    }
}

impl<K: Key, V: StateData> ListState<K, V> {
    /// Appends `value` to the current key's list.
    pub fn add(&self, scope: &impl KeyScope<K>, value: V) {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        match map.get_mut(scope.current_key()) {
            Some(list) => list.push(value),
            None => {
                map.insert(scope.current_key().clone(), vec![value]);
            }
        }
    }

    /// A copy of the current key's list (empty if none).
    pub fn get(&self, scope: &impl KeyScope<K>) -> Vec<V> {
        self.with(scope, <[V]>::to_vec)
    }

    /// Reads the current key's list without copying it.
    pub fn with<R>(&self, scope: &impl KeyScope<K>, f: impl FnOnce(&[V]) -> R) -> R {
        let mut table = self.table.borrow_mut();
        match table.read(scope).get(scope.current_key()) {
            Some(list) => f(list),
            None => f(&[]),
        }
    }

    /// Edits the current key's list in place; an emptied list is dropped.
    pub fn update<R>(&self, scope: &impl KeyScope<K>, f: impl FnOnce(&mut Vec<V>) -> R) -> R {
        let mut table = self.table.borrow_mut();
        let map = table.touched(scope);
        let mut list = map.remove(scope.current_key()).unwrap_or_default();
        let result = f(&mut list);
        if !list.is_empty() {
            map.insert(scope.current_key().clone(), list);
        }
        result
    }

    /// Drops the current key's list.
    pub fn clear(&self, scope: &impl KeyScope<K>) {
        self.table
            .borrow_mut()
            .touched(scope)
            .remove(scope.current_key());
    }
}

/// One key group of the subtask's range, as [`KeyGroupState`] is addressed:
/// the current key's ([`KeyedContext::key_group`](crate::KeyedContext::key_group))
/// or one a watermark callback visits
/// ([`WatermarkContext::key_groups`](crate::dataflow::WatermarkContext::key_groups)).
/// Only the engine makes them, so a function writes a key group's entries
/// only while it handles one of the group's keys or the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyGroup {
    index: usize,
}

impl KeyGroup {
    pub(crate) fn new(index: usize) -> Self {
        Self { index }
    }

    /// The group's index within the subtask's key-group range (0 for its
    /// first key group).
    pub fn index(&self) -> usize {
        self.index
    }
}

/// The scope of one entry of a key group's map, for the table underneath.
struct GroupEntry<'a, GK> {
    index: usize,
    key: &'a GK,
}

impl<GK> KeyScope<GK> for GroupEntry<'_, GK> {
    fn current_key(&self) -> &GK {
        self.key
    }
    fn key_group_index(&self) -> usize {
        self.index
    }
}

/// A map per key group rather than per key: entries `GK -> V` kept for a
/// whole key group, checkpointed, restored and rescaled with it like every
/// other keyed state (an entry is what changes and what a delta carries).
/// For a function that keeps one structure for all the keys of a key group,
/// so that a watermark can sweep it instead of firing a timer per key:
/// window panes (one entry per pane, holding the pane's keys) are the
/// example. An entry must only hold data of the group's own keys, so that a
/// rescale moving the group moves them too.
pub struct KeyGroupState<GK, V> {
    table: Rc<RefCell<KeyedTable<GK, V>>>,
}

impl<GK, V> Clone for KeyGroupState<GK, V> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
        }
    }
}

impl<GK: Key, V: StateData> KeyGroupState<GK, V> {
    /// Values that are maps themselves: the monitor counts their entries as
    /// the state's keys and their tables in its size, `size` giving both
    /// for one value.
    pub(crate) fn of_maps(self, size: super::InnerSize<V>) -> Self {
        self.table.borrow_mut().set_inner_size(size);
        self
    }

    /// The value under `key` in `group`.
    pub fn get(&self, group: KeyGroup, key: &GK) -> Option<V> {
        let scope = GroupEntry {
            index: group.index,
            key,
        };
        self.table.borrow_mut().read(&scope).get(key).cloned()
    }

    /// Reads `group`'s whole map.
    pub fn with<R>(&self, group: KeyGroup, f: impl FnOnce(&StateMap<GK, V>) -> R) -> R {
        let mut table = self.table.borrow_mut();
        f(table.read_group(group.index))
    }

    /// Inserts `key -> value` in `group`; returns the old value.
    pub fn insert(&self, group: KeyGroup, key: GK, value: V) -> Option<V> {
        let scope = GroupEntry {
            index: group.index,
            key: &key,
        };
        let mut table = self.table.borrow_mut();
        let map = table.touched(&scope);
        map.insert(key, value)
    }

    /// Updates the value under `key` in `group` in place, inserting `init()`
    /// first if there is none; the key is cloned only on insert.
    pub fn update<R>(
        &self,
        group: KeyGroup,
        key: &GK,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let scope = GroupEntry {
            index: group.index,
            key,
        };
        let mut table = self.table.borrow_mut();
        let map = table.touched(&scope);
        if let Some(value) = map.get_mut(key) {
            return f(value);
        }
        let mut value = init();
        let result = f(&mut value);
        map.insert(key.clone(), value);
        result
    }

    /// Removes `key` from `group`.
    pub fn remove(&self, group: KeyGroup, key: &GK) -> Option<V> {
        let scope = GroupEntry {
            index: group.index,
            key,
        };
        let mut table = self.table.borrow_mut();
        table.touched(&scope).remove(key)
    }
}
