//! The fuzz corpora (`fuzz/corpus/<target>/`, grown by `cargo fuzz run`)
//! replayed through the same checks the fuzz targets run: every input that
//! ever found new coverage keeps passing, without cargo-fuzz.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, check) in tvix_oci_fuzz_checks::TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
        {
            let data = std::fs::read(entry.path())
                .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
            let caught = std::panic::catch_unwind(|| check(&data));
            assert!(caught.is_ok(), "{target}: {} fails", entry.path().display());
            n += 1;
        }
        assert!(
            n > 10,
            "{target}: only {n} corpus inputs in {}",
            dir.display()
        );
    }
}
