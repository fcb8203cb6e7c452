use super::*;

fn errno() -> c_int {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() }
}

#[test]
fn errors_set_errno() {
    // SAFETY: every call gets NULL, a live handle or a C string.
    unsafe {
        set_errno(0);
        assert!(pool_create(ptr::null(), 16, 0).is_null());
        assert_eq!(errno(), libc::EINVAL);
        set_errno(0);
        assert!(pool_alloc(ptr::null_mut()).is_null());
        assert_eq!(errno(), libc::EINVAL);
        let mut s = core::mem::zeroed::<pool_stats>();
        assert_eq!(pool_get_stats(ptr::null(), &mut s), -1);
        let p = pool_create(c"ffi".as_ptr(), 24, 0);
        assert!(!p.is_null());
        set_errno(0);
        assert_eq!(pool_get_stats(p, ptr::null_mut()), -1);
        assert_eq!(errno(), libc::EINVAL);
        pool_free(p, ptr::null_mut());
        pool_flush(ptr::null_mut());
        assert!(pool_destroy(ptr::null_mut()).is_null());
        let o = pool_zalloc(p);
        assert!(core::slice::from_raw_parts(o.cast::<u8>(), 32)
            .iter()
            .all(|&b| b == 0));
        set_errno(0);
        pool_free(p, o.cast::<u8>().add(1).cast());
        assert_eq!(errno(), libc::EINVAL, "misaligned pointer refused");
        assert_eq!(pool_destroy(p), p.cast(), "in use");
        pool_free(p, o);
        assert_eq!(pool_get_stats(p, &mut s), 0);
        assert_eq!((s.size, s.used, s.cached), (32, 0, 1));
        assert_eq!(CStr::from_ptr(s.name), c"ffi");
        assert!(pool_destroy(p).is_null());
        set_errno(0);
        assert!(pool_destroy(p).is_null());
        assert_eq!(errno(), libc::EINVAL, "second destroy");
        assert!(pool_alloc(p).is_null());
        assert_eq!(pool_set_shared_cache(c"xchg".as_ptr()), -1);
        assert_eq!(errno(), libc::EBUSY);
    }
}
