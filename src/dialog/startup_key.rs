//! Reads a startup key (.BEK) file chosen by the person, so the root daemon never opens it.

use crate::secret::SecretBytes;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use tr::tr;
use zeroize::Zeroizing;

/// Real .BEK files are a few hundred bytes; anything larger is not one.
pub const MAX_BEK: u64 = 64 * 1024;

/// The file's bytes, or a sentence for the person explaining why not.
pub fn read(path: &Path) -> Result<SecretBytes, String> {
    let file =
        File::open(path).map_err(|e| tr!("Could not open that file: {cause}.", cause = e))?;
    // Read one byte past the limit to notice a larger file without trusting its size; the
    // buffer never grows, as a reallocation would leave an unwiped copy behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_BEK as usize + 1));
    file.take(MAX_BEK + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| tr!("Could not read that file: {cause}.", cause = e))?;
    if bytes.is_empty() {
        return Err(tr!("That file is empty, so it is not a startup key."));
    }
    if bytes.len() as u64 > MAX_BEK {
        return Err(tr!(
            "That file is too large to be a startup key (.BEK) file."
        ));
    }
    Ok(SecretBytes::new(std::mem::take(&mut *bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, len: usize) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("guilocker-{}-{name}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xab; len]).unwrap();
        path
    }

    #[test]
    fn reads_small_files_and_refuses_others() {
        let ok = temp_file("ok.BEK", 124);
        assert_eq!(read(&ok).unwrap().expose(), vec![0xab; 124].as_slice());
        let big = temp_file("big.BEK", MAX_BEK as usize + 1);
        assert!(read(&big).unwrap_err().contains("too large"));
        let exact = temp_file("exact.BEK", MAX_BEK as usize);
        assert_eq!(read(&exact).unwrap().expose().len(), MAX_BEK as usize);
        let empty = temp_file("empty.BEK", 0);
        assert!(read(&empty).unwrap_err().contains("empty"));
        assert!(read(Path::new("/nonexistent/x.BEK")).is_err());
        for p in [ok, big, exact, empty] {
            let _ = std::fs::remove_file(p);
        }
    }
}
