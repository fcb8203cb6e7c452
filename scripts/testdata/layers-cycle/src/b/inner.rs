pub fn h() -> super::B {
    super::super::c::k();
    super::B
}
