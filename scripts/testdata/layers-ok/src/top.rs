use crate::{
    base::{self, Thing},
};

// Char literals with quotes must not start a string: `mid` follows.
pub const QUOTES: [char; 2] = ['\'','"'];

pub fn t() -> Thing {
    let _ = base::quote();
    crate::mid::f()
}

mod inner {
    // Two levels up from an inline module is the crate root.
    pub fn again() {
        super::super::mid::f();
    }
}
