//! The cover site: what a browser, a scanner or a censor's prober sees. A small static
//! personal site, served with the headers and error pages of a stock nginx.

use std::time::{Duration, SystemTime};

use tamizdat_transport::server::CoverSite;

const STYLE: &str = "body{font-family:Georgia,serif;max-width:38em;margin:3em auto;padding:0 1em;color:#222;line-height:1.55}\nheader{border-bottom:1px solid #ddd;margin-bottom:2em}\nh1{font-weight:normal}\na{color:#35a}\nfooter{margin-top:4em;font-size:.85em;color:#777}\n";

fn page(title: &str, body: &str) -> Vec<u8> {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<link rel=\"stylesheet\" href=\"/style.css\">\n</head>\n<body>\n<header><h1><a href=\"/\">Field notes</a></h1></header>\n{body}\n<footer>Written slowly. <a href=\"/about.html\">About</a>.</footer>\n</body>\n</html>\n"
    )
    .into_bytes()
}

/// Size of the site's photo: big enough that downloading it (what `tamizdat doctor` does)
/// crosses the ~16 KB after which some censors freeze connections.
const PHOTO_LEN: usize = 48 * 1024;

/// The photo on the front page: a JPEG's markers around bytes that look like compressed image
/// data, the same on every relay so the site does not change between visits.
fn photo() -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0];
    let mut counter = 0u32;
    while out.len() < PHOTO_LEN - 2 {
        out.extend_from_slice(&Sha256::digest(counter.to_be_bytes()));
        counter += 1;
    }
    out.truncate(PHOTO_LEN - 2);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// The built-in cover site.
pub fn default_site() -> CoverSite {
    let index = page(
        "Field notes",
        "<article><h2>Pressing ferns</h2><img src=\"/images/ferns.jpg\" alt=\"Pressed ferns on blotting paper\" width=\"640\" height=\"427\"><p>The trick is patience and blotting paper, changed every second day for the first week. Heavy books help less than you think; even pressure matters more than weight.</p></article>\n<article><h2>On keeping a notebook</h2><p>Date every page. Write the weather. Years later, those two lines are what make the rest make sense.</p></article>",
    );
    let about = page(
        "About - Field notes",
        "<p>A few notes on plants, walks and notebooks, kept mostly for myself.</p><p>No comments, no newsletter, no tracking.</p>",
    );
    CoverSite {
        pages: vec![
            ("/".into(), "text/html", index),
            ("/about.html".into(), "text/html", about),
            ("/style.css".into(), "text/css", STYLE.as_bytes().to_vec()),
            ("/robots.txt".into(), "text/plain", b"User-agent: *\nAllow: /\n".to_vec()),
            (tamizdat_transport::diagnose::PROBE_PATH.into(), "image/jpeg", photo()),
        ],
        not_found: b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n".to_vec(),
        modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_726_000_000),
    }
}
