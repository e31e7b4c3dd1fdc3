//! Directory helpers for tests on the fs backend.

use std::path::Path;

/// Copies a directory tree, as a backup or a second machine would hold a
/// ledger. `fs::copy` keeps the permission bits, so sealed stays sealed.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
