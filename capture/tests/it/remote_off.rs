//! Without the `remote` feature the tests of restoring from object storage
//! (`remote.rs`) are not built: say so by the skip protocol rather than
//! pass in silence. `cargo test -p memimg-capture --features remote` runs
//! them (a workspace test run turns the feature on through imgtool).

#[test]
fn remote_restore_needs_the_remote_feature() {
    crate::common::skip(
        "remote_off::remote_restore_needs_the_remote_feature",
        "memimg-capture was built without its remote feature: the restore-from-URL tests were not built",
    );
}
