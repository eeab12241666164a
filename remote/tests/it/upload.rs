//! Uploads that do not finish leave no object and no pending upload.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memimg_remote::object_store::{
    self, MultipartUpload, ObjectStoreExt, PutPayload, PutResult, UploadPart,
};
use memimg_remote::{ErrorKind, RemoteWriter, Store, UploadOptions, MIN_PART_SIZE};

use crate::support::{bucket_for, url, Moto, Rng};

fn opts() -> UploadOptions {
    UploadOptions {
        part_size: MIN_PART_SIZE,
        parts_in_flight: 2,
    }
}

fn bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(9).fill(&mut v);
    v
}

#[test]
fn dropping_an_upload_aborts_it() {
    let test = "dropping_an_upload_aborts_it";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let mut w = RemoteWriter::create(&url(&bucket, "k"), &moto.options(), opts()).unwrap();
    w.write_all(&bytes(12 << 20)).unwrap();
    assert_eq!(w.stats().parts, 2);
    // The check below can see an upload: here is one.
    assert_eq!(moto.open_uploads(&bucket).len(), 1);
    drop(w);
    assert_eq!(
        moto.open_uploads(&bucket),
        Vec::<String>::new(),
        "the upload was aborted"
    );
    assert_eq!(moto.keys(&bucket), Vec::<String>::new(), "no object");
}

/// An upload whose part `fail_part` (1-based) or completion fails, and which
/// counts the aborts it is asked for. Everything else goes to the real one.
#[derive(Debug)]
struct Faulty {
    inner: Box<dyn MultipartUpload>,
    parts: usize,
    fail_part: Option<usize>,
    fail_complete: bool,
    aborts: Arc<AtomicUsize>,
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "test",
        source: format!("injected {what} failure").into(),
    }
}

#[async_trait::async_trait]
impl MultipartUpload for Faulty {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts += 1;
        if Some(self.parts) == self.fail_part {
            return Box::pin(async { Err(injected("part")) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.fail_complete {
            return Err(injected("completion"));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

fn faulty(
    store: &Store,
    key: &str,
    fail_part: Option<usize>,
    fail_complete: bool,
) -> (RemoteWriter, Arc<AtomicUsize>) {
    faulty_with(store, key, fail_part, fail_complete, opts())
}

fn faulty_with(
    store: &Store,
    key: &str,
    fail_part: Option<usize>,
    fail_complete: bool,
    o: UploadOptions,
) -> (RemoteWriter, Arc<AtomicUsize>) {
    let path = object_store::path::Path::from(key);
    let inner = memimg_remote::runtime::block_on(store.object_store().put_multipart(&path))
        .unwrap()
        .unwrap();
    let aborts = Arc::new(AtomicUsize::new(0));
    let up = Faulty {
        inner,
        parts: 0,
        fail_part,
        fail_complete,
        aborts: aborts.clone(),
    };
    (RemoteWriter::from_upload(Box::new(up), key, o), aborts)
}

#[test]
fn a_failed_part_aborts_the_upload() {
    let test = "a_failed_part_aborts_the_upload";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let store = Store::new(&bucket, &moto.options()).unwrap();
    let (mut w, aborts) = faulty(&store, "k", Some(2), false);
    let data = bytes(30 << 20);
    // Part 2 fails in the background; the error shows when the writer next
    // waits for a part (or at the commit), never later.
    let res = w.write_all(&data);
    let err = match res {
        Err(e) => memimg_remote::Error::find(&e)
            .map(|e| e.to_string())
            .unwrap_or_else(|| e.to_string()),
        Ok(()) => w.commit().unwrap_err().to_string(),
    };
    assert!(err.contains("uploading part 2: "), "{err}");
    assert!(err.contains("injected part failure"), "{err}");
    assert!(err.contains("the upload was aborted"), "{err}");
    assert_eq!(aborts.load(Ordering::SeqCst), 1);
    assert_eq!(moto.open_uploads(&bucket), Vec::<String>::new());
    assert_eq!(moto.keys(&bucket), Vec::<String>::new());
}

#[test]
fn a_failed_completion_aborts_the_upload() {
    let test = "a_failed_completion_aborts_the_upload";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let store = Store::new(&bucket, &moto.options()).unwrap();
    let (mut w, aborts) = faulty(&store, "k", None, true);
    w.write_all(&bytes(7 << 20)).unwrap();
    let e = w.commit().unwrap_err();
    assert!(e.to_string().contains("injected completion failure"), "{e}");
    assert_eq!(aborts.load(Ordering::SeqCst), 1);
    assert_eq!(moto.open_uploads(&bucket), Vec::<String>::new());
    assert_eq!(moto.keys(&bucket), Vec::<String>::new());
    // A control: the same writer without faults leaves an object.
    let (mut w, _) = faulty(&store, "k", None, false);
    w.write_all(&bytes(7 << 20)).unwrap();
    w.commit().unwrap();
    assert_eq!(moto.keys(&bucket), vec!["k".to_string()]);
}

/// The server dies with parts in flight. What this shows: the writer returns
/// a typed error in bounded time (retries are bounded), says the abort could
/// not be sent, and no thread hangs. What it cannot show: moto keeps its
/// state in memory, so a restarted server has no upload to list either way;
/// that an error path does reach the store's abort is shown by the two tests
/// above.
#[test]
fn the_server_killed_during_an_upload() {
    let test = "the_server_killed_during_an_upload";
    let Some(mut moto) = Moto::start(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let mut w = RemoteWriter::create(&url(&bucket, "k"), &moto.options(), opts()).unwrap();
    let data = bytes(11 << 20);
    w.write_all(&data).unwrap();
    moto.kill();
    let t = Instant::now();
    let res = w.write_all(&data).map_err(|e| {
        memimg_remote::Error::find(&e)
            .map(ToString::to_string)
            .unwrap_or(e.to_string())
    });
    let err = match res {
        Err(e) => e,
        Ok(()) => w.commit().unwrap_err().to_string(),
    };
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "gave up after {:?}",
        t.elapsed()
    );
    assert!(err.contains("aborting the upload failed too"), "{err}");
    assert!(err.contains("no object was created"), "{err}");
}

#[test]
fn writing_after_a_failure_is_refused() {
    let test = "writing_after_a_failure_is_refused";
    let Some(moto) = Moto::shared(test) else {
        return;
    };
    let bucket = bucket_for(test);
    moto.create_bucket(&bucket);
    let store = Store::new(&bucket, &moto.options()).unwrap();
    // One part in flight: sending part 2 waits for part 1, and sees it fail.
    let one = UploadOptions {
        part_size: MIN_PART_SIZE,
        parts_in_flight: 1,
    };
    let (mut w, aborts) = faulty_with(&store, "k", Some(1), false, one);
    let data = bytes(MIN_PART_SIZE);
    w.write_all(&data).unwrap(); // part 1 leaves, and fails in the background
    let first = w.write_all(&data).unwrap_err();
    assert_eq!(aborts.load(Ordering::SeqCst), 1, "{first}");
    assert_eq!(moto.open_uploads(&bucket), Vec::<String>::new());
    let again = w.write_all(b"x").unwrap_err();
    let e = memimg_remote::Error::find(&again).unwrap();
    assert_eq!(e.kind(), ErrorKind::Aborted, "{again} after {first}");
    assert!(e.to_string().contains("failed earlier"), "{e}");
}
