//! A batch's manifest (`ferry_batch::Manifest::parse`): any bytes give a
//! manifest or an error. Round trip: a manifest that parses is written by
//! `to_bytes` and parses again to the same manifest.
#![no_main]

use ferry_batch::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(manifest) = Manifest::parse(bytes) else {
        return;
    };
    let _ = manifest.rows();
    let written = manifest.to_bytes();
    let again = Manifest::parse(&written).unwrap_or_else(|e| {
        panic!(
            "{manifest:?} written as {:?} does not parse: {e}",
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(again, manifest);
    for file in &manifest.files {
        let _ = Manifest::batch_of(&file.name);
    }
});
