//! Link options of the `ferry` binary.
//!
//! On Linux with glibc the binary is linked with `-z pack-relative-relocs`
//! (DT_RELR, glibc 2.36 and binutils 2.38 or later; an older `ld` ignores
//! it with a warning). `ferry` is a position-independent executable with
//! about 120,000 relative relocations: as `R_X86_64_RELATIVE` entries they
//! take 2.9 MB of `.rela.dyn`, which the loader reads whole at every start,
//! so each `ferry` process held those pages for nothing
//! (bench/results/rss-2026-12-07b.txt). Packed, they take a few kilobytes.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
