// crate::top::in_a_comment is not an edge
/* nor in a /* nested */ block comment: crate::top */
pub struct Thing;

pub fn top() {}

pub(super) fn helper() -> &'static str {
    "crate::top::in_a_string"
}

pub fn quote() -> char {
    '\''
}

pub fn raw() -> &'static str {
    r#"" crate::top ""#
}

#[cfg(all(test, not(loom)))]
fn test_helper() {
    crate::mid::f();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top;
}
