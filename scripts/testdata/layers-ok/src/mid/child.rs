// super:: is mid here; super::super:: is the crate root.
pub fn g() -> super::super::base::Thing {
    super::top::x();
    super::super::base::helper();
    super::f_is_mid_itself()
}
