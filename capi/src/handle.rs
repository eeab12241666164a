//! Opaque handles, and the table of live ones.
//!
//! A handle is a `Box` given to C as a pointer. Every pointer C passes back
//! is looked up in the table, with its type, before it is used: a pointer
//! that was never a handle, was already freed, or is a handle of another
//! type is an error, not undefined behaviour. (A freed handle's address
//! can be reused by a new handle of the same type; using the old pointer
//! then reaches the new handle, as with any allocator.)

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::error::Failure;

/// A type handed to C behind a pointer.
pub(crate) trait Handle: Sized + 'static {
    /// Its C name, for messages.
    const NAME: &'static str;
}

static LIVE: Mutex<BTreeMap<usize, TypeId>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, TypeId>> {
    // The table is never left half-changed (inserts and removes only), so
    // a poisoned lock still holds a consistent table.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes `v` a handle.
pub(crate) fn new_handle<T: Handle>(v: T) -> *mut T {
    let p = Box::into_raw(Box::new(v));
    live().insert(p as usize, TypeId::of::<T>());
    p
}

fn check<T: Handle>(p: *const T, arg: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{arg} is NULL")));
    }
    match live().get(&(p as usize)) {
        Some(t) if *t == TypeId::of::<T>() => Ok(()),
        Some(_) => Err(Failure::invalid(format!(
            "{arg} ({p:p}) is a handle of another type, not a {}",
            T::NAME
        ))),
        None => Err(Failure::invalid(format!(
            "{arg} ({p:p}) is not a live {} (never made by this library, or already freed)",
            T::NAME
        ))),
    }
}

/// The value behind a handle.
///
/// # Safety
/// No other thread frees the handle while the reference lives.
pub(crate) unsafe fn handle_ref<'a, T: Handle>(p: *const T, arg: &str) -> Result<&'a T, Failure> {
    check(p, arg)?;
    // SAFETY: p is in the table of live handles with type T, so it came
    // from Box::into_raw of a T and has not been freed.
    Ok(unsafe { &*p })
}

/// The value behind a handle, to change it.
///
/// # Safety
/// No other thread uses or frees the handle while the reference lives.
pub(crate) unsafe fn handle_mut<'a, T: Handle>(p: *mut T, arg: &str) -> Result<&'a mut T, Failure> {
    check(p, arg)?;
    // SAFETY: as in handle_ref; the caller's contract gives exclusivity.
    Ok(unsafe { &mut *p })
}

/// Frees a handle; NULL is allowed and does nothing.
///
/// # Safety
/// No other thread uses the handle meanwhile.
pub(crate) unsafe fn free_handle<T: Handle>(p: *mut T, arg: &str) -> Result<(), Failure> {
    if p.is_null() {
        return Ok(());
    }
    {
        let mut table = live();
        match table.get(&(p as usize)) {
            Some(t) if *t == TypeId::of::<T>() => {
                table.remove(&(p as usize));
            }
            _ => {
                drop(table);
                return check(p, arg);
            }
        }
    }
    // SAFETY: p was in the table with type T and is now out of it, so it
    // came from Box::into_raw of a T and nothing else will free it.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
}

/// Stores a new handle in `*out`; on failure `*out` is set to NULL.
///
/// # Safety
/// `out` is NULL or valid for a pointer write.
pub(crate) unsafe fn give<T: Handle>(
    out: *mut *mut T,
    make: impl FnOnce() -> Result<T, Failure>,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::invalid("out is NULL"));
    }
    // SAFETY: out is not NULL and, by contract, writable.
    unsafe { out.write(std::ptr::null_mut()) };
    let v = make()?;
    // SAFETY: as above.
    unsafe { out.write(new_handle(v)) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct A(#[allow(dead_code)] u64);
    impl Handle for A {
        const NAME: &'static str = "a";
    }
    struct B;
    impl Handle for B {
        const NAME: &'static str = "b";
    }

    #[test]
    fn handles_are_checked_by_type_and_freed_once() {
        let a = new_handle(A(1));
        // SAFETY: a is live.
        assert!(unsafe { handle_ref(a, "a") }.is_ok());
        // SAFETY: the check refuses a before it is dereferenced as a B.
        assert!(unsafe { handle_ref(a.cast::<B>(), "a") }.is_err());
        // SAFETY: the same.
        assert!(unsafe { free_handle(a.cast::<B>(), "a") }.is_err());
        // SAFETY: a is live and used by this thread only.
        assert!(unsafe { free_handle(a, "a") }.is_ok());
        // SAFETY: a is no longer in the table: refused, not freed again.
        assert!(unsafe { free_handle(a, "a") }.is_err());
        // SAFETY: the same.
        assert!(unsafe { handle_ref(a, "a") }.is_err());
        // SAFETY: NULL is allowed.
        assert!(unsafe { free_handle(std::ptr::null_mut::<A>(), "a") }.is_ok());
    }
}
