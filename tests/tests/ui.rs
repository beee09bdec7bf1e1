//! Compile-time behaviour of the macros (trybuild): what must compile (`tests/ui/*/pass`) and
//! the diagnostics for each kind of mistake (`tests/ui/*/fail`, with the expected `.stderr`
//! beside each case; regenerate with `TRYBUILD=overwrite` and read every one).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/*/pass/*.rs");
    t.compile_fail("ui/*/fail/*.rs");
}
