//! iptables access behind a small trait (as go-iptables in the reference
//! plugins): the real one runs the `iptables` binary with `-w`; the fake keeps
//! rules in memory so chain logic is testable without root.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hostkit::iptables::RealIptables;

/// A failed iptables operation: the command line and what the binary said (skiff's one
/// iptables error, from `hostkit`).
pub type Error = hostkit::iptables::IptablesError;

/// The operations the plugins need, in `iptables` argument terms.
pub trait Iptables {
    /// Runs `iptables -t table args...`; returns stdout.
    fn run(&self, table: &str, args: &[&str]) -> Result<String, Error>;
    /// True when the rule exists (`-C`), false when it or its chain does not.
    fn exists(&self, table: &str, chain: &str, rule: &[String]) -> Result<bool, Error>;
    /// Chains of `table`.
    fn chains(&self, table: &str) -> Result<Vec<String>, Error>;
    /// Rules of `chain` as `-S` prints them (without the `-N` line).
    fn rules(&self, table: &str, chain: &str) -> Result<Vec<String>, Error>;

    /// Creates `new_chains` and appends `rules` (chain, rule words) as one
    /// batch. The default runs one command per change; the real binary
    /// overrides it with a single `iptables-restore --noflush`, which is what
    /// keeps a pod's CNI ADD fast (each `iptables` exec costs milliseconds).
    fn apply(
        &self,
        table: &str,
        new_chains: &[&str],
        rules: &[(&str, Vec<String>)],
    ) -> Result<(), Error> {
        for c in new_chains {
            self.run(table, &["-N", c])?;
        }
        for (chain, rule) in rules {
            let mut args = vec!["-A", *chain];
            args.extend(strs(rule));
            self.run(table, &args)?;
        }
        Ok(())
    }
}

/// Quotes one word for `iptables-restore` as `iptables-save` does.
fn restore_word(w: &str) -> String {
    if !w.is_empty() && !w.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        return w.to_string();
    }
    format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Creates `chain` if missing.
pub fn ensure_chain(ipt: &dyn Iptables, table: &str, chain: &str) -> Result<(), Error> {
    if !ipt.chains(table)?.iter().any(|c| c == chain) {
        ipt.run(table, &["-N", chain])?;
    }
    Ok(())
}

/// Appends (or with `prepend` inserts first) `rule` unless it is there.
pub fn add_unique(
    ipt: &dyn Iptables,
    table: &str,
    chain: &str,
    prepend: bool,
    rule: &[String],
) -> Result<(), Error> {
    if ipt.exists(table, chain, rule)? {
        return Ok(());
    }
    let mut args = vec![if prepend { "-I" } else { "-A" }, chain];
    if prepend {
        args.push("1");
    }
    args.extend(strs(rule));
    ipt.run(table, &args).map(drop)
}

/// Deletes `rule` if it is there.
pub fn delete_if_exists(
    ipt: &dyn Iptables,
    table: &str,
    chain: &str,
    rule: &[String],
) -> Result<(), Error> {
    if ipt.exists(table, chain, rule)? {
        let mut args = vec!["-D", chain];
        args.extend(strs(rule));
        ipt.run(table, &args)?;
    }
    Ok(())
}

/// Deletes every rule of `from` that jumps to `target`.
pub fn delete_jumps(
    ipt: &dyn Iptables,
    table: &str,
    from: &str,
    target: &str,
) -> Result<(), Error> {
    if !ipt.chains(table)?.iter().any(|c| c == from) {
        return Ok(());
    }
    for line in ipt.rules(table, from)? {
        let words = split_words(&line);
        if words.len() > 2 && words[0] == "-A" && jumps_to(&words, target) {
            delete_if_exists(ipt, table, from, &words[2..])?;
        }
    }
    Ok(())
}

/// True when `-j target` appears in a rule.
pub fn jumps_to(words: &[String], target: &str) -> bool {
    words.windows(2).any(|w| w[0] == "-j" && w[1] == target)
}

/// Flushes and deletes `chain`; a missing chain is success.
pub fn clear_and_delete_chain(ipt: &dyn Iptables, table: &str, chain: &str) -> Result<(), Error> {
    if ipt.chains(table)?.iter().any(|c| c == chain) {
        ipt.run(table, &["-F", chain])?;
        ipt.run(table, &["-X", chain])?;
    }
    Ok(())
}

/// Splits an `iptables -S` line into words, honouring `"..."` with `\"` escapes.
pub fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The real `iptables` binary (IPv4) with `-w` so concurrent plugins wait for the lock, through
/// skiff's one iptables interface ([`hostkit::iptables::RealIptables`]).
#[derive(Debug, Clone)]
pub struct Binary {
    ipt: RealIptables,
}

impl Default for Binary {
    fn default() -> Self {
        Binary::program("iptables")
    }
}

impl Binary {
    /// `iptables` or `ip6tables` (and their `-restore`).
    pub fn program(program: &str) -> Binary {
        let (restore, save) = (format!("{program}-restore"), format!("{program}-save"));
        Binary {
            ipt: RealIptables::new().with_commands(&restore, &save),
        }
    }
}

impl Iptables for Binary {
    fn run(&self, table: &str, args: &[&str]) -> Result<String, Error> {
        self.ipt.run(table, args)
    }

    fn exists(&self, table: &str, chain: &str, rule: &[String]) -> Result<bool, Error> {
        self.ipt.exists(table, chain, &strs(rule))
    }

    fn chains(&self, table: &str) -> Result<Vec<String>, Error> {
        let s = self.run(table, &["-S"])?;
        Ok(s.lines()
            .filter_map(|l| l.strip_prefix("-N ").or_else(|| l.strip_prefix("-P ")))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect())
    }

    fn apply(
        &self,
        table: &str,
        new_chains: &[&str],
        rules: &[(&str, Vec<String>)],
    ) -> Result<(), Error> {
        let mut input = format!("*{table}\n");
        for c in new_chains {
            input.push_str(&format!(":{c} - [0:0]\n"));
        }
        for (chain, rule) in rules {
            let words: Vec<String> = rule.iter().map(|w| restore_word(w)).collect();
            input.push_str(&format!("-A {chain} {}\n", words.join(" ")));
        }
        input.push_str("COMMIT\n");
        hostkit::iptables::Iptables::restore(&mut self.ipt.clone(), &input)
    }

    fn rules(&self, table: &str, chain: &str) -> Result<Vec<String>, Error> {
        let s = self.run(table, &["-S", chain])?;
        Ok(s.lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect())
    }
}

/// Rules of each `(table, chain)` as word lists.
pub type FakeTables = BTreeMap<(String, String), Vec<Vec<String>>>;

/// In-memory iptables for unit tests: chains of rules as word lists.
#[derive(Debug, Default)]
pub struct Fake {
    /// `(table, chain)` to rules; built-in chains appear once used.
    pub tables: Mutex<FakeTables>,
}

impl Fake {
    /// A fake with the nat table's built-in chains.
    pub fn new() -> Self {
        let f = Fake::default();
        for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            f.tables
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(("nat".into(), c.into()), Vec::new());
        }
        f
    }

    /// Rules of a chain, joined with spaces.
    pub fn dump(&self, table: &str, chain: &str) -> Option<Vec<String>> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&(table.into(), chain.into()))
            .map(|rs| rs.iter().map(|r| r.join(" ")).collect())
    }
}

impl Iptables for Fake {
    fn run(&self, table: &str, args: &[&str]) -> Result<String, Error> {
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let fail =
            |m: &str| Error::Injected(format!("iptables -t {table} {}: {m}", args.join(" ")));
        let key = |c: &str| (table.to_string(), c.to_string());
        let words = |from: usize| {
            args[from..]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        match args {
            ["-N", c] => {
                if t.contains_key(&key(c)) {
                    return Err(fail("Chain already exists."));
                }
                t.insert(key(c), Vec::new());
            }
            ["-F", c] => t.get_mut(&key(c)).ok_or_else(|| fail("No chain"))?.clear(),
            ["-X", c] => {
                let referenced = t.values().flatten().any(|r| jumps_to(r, c));
                if referenced || t.get(&key(c)).is_some_and(|r| !r.is_empty()) {
                    return Err(fail("Directory not empty / referenced"));
                }
                t.remove(&key(c)).ok_or_else(|| fail("No chain"))?;
            }
            ["-A", c, ..] => {
                if args
                    .iter()
                    .any(|a| a.starts_with("CNI-") && *a != *c && !t.contains_key(&key(a)))
                {
                    return Err(fail("jump target missing"));
                }
                let r = words(2);
                t.get_mut(&key(c)).ok_or_else(|| fail("No chain"))?.push(r);
            }
            ["-I", c, "1", ..] => {
                let r = words(3);
                t.get_mut(&key(c))
                    .ok_or_else(|| fail("No chain"))?
                    .insert(0, r);
            }
            ["-D", c, ..] => {
                let r = words(2);
                let rules = t.get_mut(&key(c)).ok_or_else(|| fail("No chain"))?;
                let i = rules
                    .iter()
                    .position(|x| *x == r)
                    .ok_or_else(|| fail("Bad rule"))?;
                rules.remove(i);
            }
            _ => return Err(fail("unsupported by fake")),
        }
        Ok(String::new())
    }

    fn exists(&self, table: &str, chain: &str, rule: &[String]) -> Result<bool, Error> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.get(&(table.into(), chain.into()))
            .is_some_and(|rs| rs.iter().any(|r| r == rule)))
    }

    fn chains(&self, table: &str) -> Result<Vec<String>, Error> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.keys()
            .filter(|(tb, _)| tb == table)
            .map(|(_, c)| c.clone())
            .collect())
    }

    fn rules(&self, table: &str, chain: &str) -> Result<Vec<String>, Error> {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let quote = |w: &String| {
            if w.contains(' ') || w.contains('"') {
                format!("\"{}\"", w.replace('"', "\\\""))
            } else {
                w.clone()
            }
        };
        Ok(t.get(&(table.into(), chain.into()))
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "-A {chain} {}",
                            r.iter().map(quote).collect::<Vec<_>>().join(" ")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_handles_quotes() {
        let w =
            split_words(r#"-A X -m comment --comment "dnat name: \"n\" id: \"c\"" -j CNI-DN-1"#);
        assert_eq!(w[5], r#"dnat name: "n" id: "c""#);
        assert_eq!(w.last().unwrap(), "CNI-DN-1");
    }

    #[test]
    fn fake_helpers_are_idempotent() {
        let f = Fake::new();
        let r: Vec<String> = ["-s", "10.0.0.2", "-j", "CNI-X"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        ensure_chain(&f, "nat", "CNI-X").unwrap();
        ensure_chain(&f, "nat", "CNI-X").unwrap();
        add_unique(&f, "nat", "POSTROUTING", false, &r).unwrap();
        add_unique(&f, "nat", "POSTROUTING", false, &r).unwrap();
        assert_eq!(f.dump("nat", "POSTROUTING").unwrap().len(), 1);
        delete_jumps(&f, "nat", "POSTROUTING", "CNI-X").unwrap();
        clear_and_delete_chain(&f, "nat", "CNI-X").unwrap();
        clear_and_delete_chain(&f, "nat", "CNI-X").unwrap();
        assert!(f.dump("nat", "CNI-X").is_none());
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn restore_words_are_quoted_like_iptables_save() {
        assert_eq!(restore_word("MASQUERADE"), "MASQUERADE");
        assert_eq!(
            restore_word(r#"name: "skiff" id: "x""#),
            r#""name: \"skiff\" id: \"x\"""#
        );
        // What -S prints splits back into the same words.
        let q = restore_word(r#"name: "skiff" id: "x""#);
        assert_eq!(
            split_words(&format!("-A C -m comment --comment {q}"))[5],
            r#"name: "skiff" id: "x""#
        );
    }
}
