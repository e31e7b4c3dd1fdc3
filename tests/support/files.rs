//! Copying a ledger's files, to damage a copy and keep the original.

use std::path::Path;

/// Copies the directory `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            // Copies the permission bits too, so sealed stays sealed.
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
