mod inner;

pub struct B;
pub use inner::h as inner_h;
