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
