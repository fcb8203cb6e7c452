use crate::{b::{inner_h, B}};

pub(super) fn x() {}

pub fn y() -> B {
    inner_h()
}
