//! Link vmpod-virt's `curl_global_init` (see `main.rs`) into the dynamic symbol table, so
//! that libvirt's call binds to it.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=curl_global_init");
}
