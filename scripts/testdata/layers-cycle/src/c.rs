pub(super) fn k() {
    super::a::x()
}
