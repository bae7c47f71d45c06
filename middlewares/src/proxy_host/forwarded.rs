//! Guards the generic `ProxyHttp` impl (`host.rs`) against a method pingora-proxy adds: nothing in
//! Pingora stops a wrapper from silently falling back to a new method's default instead of
//! forwarding it. The test reads the trait from the pingora-proxy source cargo built against.

#[cfg(test)]
mod tests {
    /// Reads pingora-proxy's `ProxyHttp` trait from the source cargo built against and fails
    /// when it has a method the generic impl does not forward.
    #[test]
    fn every_proxy_http_method_is_forwarded() {
        let metadata = std::process::Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(metadata.status.success(), "cargo metadata failed");
        let json = String::from_utf8(metadata.stdout).expect("utf-8 metadata");
        let manifest = json
            .split("\"manifest_path\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .find(|p| p.contains("pingora-proxy-") && p.ends_with("Cargo.toml"))
            .expect("pingora-proxy is a dependency");
        let trait_src = std::path::Path::new(manifest)
            .parent()
            .expect("package dir")
            .join("src/proxy_trait.rs");
        let source = std::fs::read_to_string(&trait_src).expect("proxy_trait.rs is readable");
        let host = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy_host/host.rs"),
        )
        .expect("host.rs is readable");
        let body = &source[source.find("pub trait ProxyHttp").expect("the trait")..];
        let body = &body[..body.find("\n}\n").expect("end of the trait")];
        let mut missing = Vec::new();
        let mut seen = 0;
        for line in body.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            let Some(rest) = line
                .strip_prefix("fn ")
                .or_else(|| line.strip_prefix("async fn "))
            else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            seen += 1;
            let defined =
                host.contains(&format!("fn {name}(")) || host.contains(&format!("fn {name}<"));
            if !defined {
                missing.push(name);
            }
        }
        assert!(
            seen >= 40,
            "parsed only {seen} methods from {}",
            trait_src.display()
        );
        assert!(
            missing.is_empty(),
            "ProxyHttp methods not forwarded: {missing:?}"
        );
    }
}
