//! Fuzz target `import_ignition` and its seeds: `statelessctl import
//! ignition` reads configs the admin got from elsewhere. The converter is
//! statelessctl's own file, included as it is (it is pure and uses only
//! crates, never `crate::`), since statelessctl is a binary, not a library.

#[path = "../../ctl/src/ignition.rs"]
#[allow(dead_code)]
mod convert;

use stateless_model::Model;

/// `convert` over the input. Beyond not panicking: every refusal is one
/// line with a JSON path, and every accepted config yields a model the
/// model's loader accepts, and output paths that stay below `files/`.
pub fn import_ignition(data: &[u8]) {
    match convert::convert(data) {
        Err(problems) => {
            assert!(!problems.is_empty(), "a refusal without a problem");
            for p in problems {
                let line = p.to_string();
                assert!(!line.contains('\n') && !p.path.is_empty(), "not one line with a path: {line:?}");
            }
        }
        Ok(layer) => {
            if let Err(e) = Model::load("model.toml", "fuzz", &layer.model_toml) {
                panic!("an accepted config gave a refused model.toml: {e}\n{}", layer.model_toml);
            }
            for path in layer.nodes.keys().chain(layer.meta.keys()) {
                let ok = !path.is_empty()
                    && !path.starts_with('/')
                    && !path.contains('\0')
                    && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
                assert!(ok, "an output path that leaves files/: {path:?}");
                assert!(layer.nodes.contains_key(path), "files.toml names a path with no node: {path:?}");
            }
            let _ = layer.files_toml();
        }
    }
}

/// Seeds for `import_ignition`: the test configs of ctl/tests/ignition/
/// (one per spec version, one using every field, one per refusal).
pub fn import_ignition_seeds() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ctl/tests/ignition");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("reading ctl/tests/ignition")
        .map(|e| {
            let p = e.expect("listing ctl/tests/ignition").path();
            let name = p.file_stem().expect("a file name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("reading a test config"))
        })
        .collect();
    seeds.sort();
    seeds
}
