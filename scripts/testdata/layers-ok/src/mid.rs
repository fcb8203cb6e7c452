mod child;

// In a nested group only `base` is a module of this crate.
use crate::{base::{top}};

pub fn f() -> crate::Thing {
    top();
    child::g()
}

// mid's own `top`, not the crate's: child.rs reaches it as super::top.
pub mod top {
    pub fn x() {}
}
