//! URL templates: `https://cfg.example/${node}/` and friends.
//!
//! A template is parsed once (when the command line is read, so a typo such
//! as `${nod}` is reported before any network access) and rendered once the
//! node's identity is known. Substituted values are percent-encoded: only
//! RFC 3986 "unreserved" bytes (`A-Z a-z 0-9 - . _ ~`) pass through, so a
//! value can never add a path segment, a query, a port or a host. The values
//! `.` and `..` are refused because a client would resolve them as dot
//! segments and climb out of the intended path.
//!
//! Syntax: `${name}` is a variable; a `$` not followed by `{` is a literal
//! dollar. There is no escape for a literal `${`: URLs do not need one.

use std::fmt;

/// A variable that may appear in a template as `${name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    /// The node identity (`rd.stateless.node=`, SMBIOS UUID, or MAC).
    Node,
    /// The SMBIOS system UUID, lower case.
    Uuid,
    /// The boot NIC's MAC address, lower case, colon separated.
    Mac,
    /// The kernel host name.
    Hostname,
    /// The SMBIOS system serial number.
    Serial,
}

impl Var {
    /// Every variable, in the order the documentation lists them.
    pub const ALL: [Var; 5] = [Var::Node, Var::Uuid, Var::Mac, Var::Hostname, Var::Serial];

    /// The name written between `${` and `}`.
    pub fn name(self) -> &'static str {
        match self {
            Var::Node => "node",
            Var::Uuid => "uuid",
            Var::Mac => "mac",
            Var::Hostname => "hostname",
            Var::Serial => "serial",
        }
    }

    /// Looks a variable up by its name (case sensitive).
    pub fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}}}", self.name())
    }
}

/// Supplies variable values when a template is rendered.
pub trait Values {
    /// The value of `var`, or `None` when this machine does not have one.
    fn value(&self, var: Var) -> Option<&str>;
}

impl Values for [(Var, &str)] {
    fn value(&self, var: Var) -> Option<&str> {
        self.iter().find(|(v, _)| *v == var).map(|(_, s)| *s)
    }
}

/// Why a template could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `${name}` names no known variable.
    #[error("unknown variable ${{{name}}} (known: ${{node}}, ${{uuid}}, ${{mac}}, ${{hostname}}, ${{serial}})")]
    UnknownVariable {
        /// The name as written.
        name: String,
    },
    /// A `${` with no closing `}`.
    #[error("unterminated ${{ at byte {offset}")]
    Unterminated {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// The variable is known but this machine has no value for it.
    #[error("{var} is not available on this machine")]
    Unavailable {
        /// The variable.
        var: Var,
    },
    /// The value would be read as a dot segment (`.` or `..`).
    #[error("{var} has the unsafe value {value:?}")]
    UnsafeValue {
        /// The variable.
        var: Var,
        /// The refused value.
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A parsed template; keeps its source text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`, checking every `${...}` names a known variable.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(pos) = rest.find("${") {
            let (before, from_dollar) = rest.split_at(pos);
            literal.push_str(before);
            let offset = source.len() - from_dollar.len();
            let inner = from_dollar.get(2..).unwrap_or_default();
            let Some(end) = inner.find('}') else {
                return Err(TemplateError::Unterminated { offset });
            };
            let (name, after) = inner.split_at(end);
            let var = Var::from_name(name).ok_or_else(|| TemplateError::UnknownVariable { name: name.to_owned() })?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var));
            rest = after.get(1..).unwrap_or_default();
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { source: source.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The variables the template uses, in order of appearance (with repeats).
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            Part::Literal(_) => None,
        })
    }

    /// The variables written in the URL's host part (between `://` and the
    /// first `/`, `?` or `#`): their values choose the server.
    pub fn host_vars(&self) -> Vec<Var> {
        let mut out = Vec::new();
        // 0: before `://`, 1: in the authority, 2: past it.
        let mut state = 0;
        for part in &self.parts {
            match part {
                Part::Var(v) if state == 1 => out.push(*v),
                Part::Var(_) => {}
                Part::Literal(text) => {
                    let mut rest = text.as_str();
                    if state == 0 {
                        if let Some((_, after)) = rest.split_once("://") {
                            state = 1;
                            rest = after;
                        }
                    }
                    if state == 1 && rest.contains(['/', '?', '#', '\\']) {
                        state = 2;
                    }
                }
            }
        }
        out
    }

    /// Substitutes every variable, percent-encoding the values.
    pub fn render(&self, values: &(impl Values + ?Sized)) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(var) => {
                    let value = values.value(*var).filter(|v| !v.is_empty());
                    let value = value.ok_or(TemplateError::Unavailable { var: *var })?;
                    if value == "." || value == ".." {
                        return Err(TemplateError::UnsafeValue { var: *var, value: value.to_owned() });
                    }
                    percent_encode_into(value, &mut out);
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Appends `value` to `out`, percent-encoding every byte that is not
/// RFC 3986 "unreserved".
pub fn percent_encode_into(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
}

/// The upper-case hex digit for the low nibble of `n`.
fn hex_digit(n: u8) -> char {
    let n = n & 0x0f;
    char::from(if n < 10 { b'0' + n } else { b'A' + n - 10 })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const VALUES: &[(Var, &str)] = &[
        (Var::Node, "node-7"),
        (Var::Uuid, "4c4c4544-0042-3510-8052-b4c04f4e4d32"),
        (Var::Mac, "52:54:00:12:34:56"),
        (Var::Hostname, "blade 7/rack?2"),
        (Var::Serial, "ÄB#1"),
    ];

    #[test]
    fn render_table() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("https://cfg.example/", "https://cfg.example/"),
            ("https://cfg/${node}", "https://cfg/node-7"),
            ("${node}", "node-7"),
            ("https://cfg/${uuid}/x", "https://cfg/4c4c4544-0042-3510-8052-b4c04f4e4d32/x"),
            ("https://cfg/${mac}", "https://cfg/52%3A54%3A00%3A12%3A34%3A56"),
            ("https://cfg/?h=${hostname}", "https://cfg/?h=blade%207%2Frack%3F2"),
            ("https://cfg/${serial}", "https://cfg/%C3%84B%231"),
            ("${node}${node}", "node-7node-7"),
            ("a$b$", "a$b$"),
            ("$$", "$$"),
            ("${node}$", "node-7$"),
            ("{node}", "{node}"),
            ("$${node}", "$node-7"),
        ];
        for (src, want) in cases {
            let t = Template::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
            assert_eq!(t.render(VALUES).as_deref(), Ok(*want), "template {src:?}");
            assert_eq!(t.as_str(), *src);
        }
    }

    #[test]
    fn parse_errors_table() {
        let cases: &[(&str, TemplateError)] = &[
            ("${", TemplateError::Unterminated { offset: 0 }),
            ("https://x/${node", TemplateError::Unterminated { offset: 10 }),
            ("${node}${", TemplateError::Unterminated { offset: 7 }),
            ("${nod}", TemplateError::UnknownVariable { name: "nod".into() }),
            ("${}", TemplateError::UnknownVariable { name: "".into() }),
            ("${NODE}", TemplateError::UnknownVariable { name: "NODE".into() }),
            ("${ node}", TemplateError::UnknownVariable { name: " node".into() }),
            ("${${node}}", TemplateError::UnknownVariable { name: "${node".into() }),
        ];
        for (src, want) in cases {
            assert_eq!(Template::parse(src).as_ref(), Err(want), "template {src:?}");
        }
    }

    #[test]
    fn render_errors_table() {
        let cases: &[(&[(Var, &str)], TemplateError)] = &[
            (&[], TemplateError::Unavailable { var: Var::Mac }),
            (&[(Var::Mac, "")], TemplateError::Unavailable { var: Var::Mac }),
            (&[(Var::Mac, ".")], TemplateError::UnsafeValue { var: Var::Mac, value: ".".into() }),
            (&[(Var::Mac, "..")], TemplateError::UnsafeValue { var: Var::Mac, value: "..".into() }),
        ];
        let t = Template::parse("https://cfg/${mac}/bundle").unwrap();
        for (values, want) in cases {
            assert_eq!(t.render(*values).as_ref(), Err(want), "values {values:?}");
        }
        // Dots inside a longer value are harmless.
        assert_eq!(t.render(&[(Var::Mac, "...")][..]).as_deref(), Ok("https://cfg/.../bundle"));
    }

    #[test]
    fn vars_in_the_host_part() {
        let cases: &[(&str, &[Var])] = &[
            ("https://cfg.example/${hostname}", &[]),
            ("https://${hostname}.cfg.example/", &[Var::Hostname]),
            ("https://${hostname}", &[Var::Hostname]),
            ("https://cfg-${node}.example:8443/x/${mac}", &[Var::Node]),
            ("https://user@${serial}:1?${uuid}", &[Var::Serial]),
            ("https://cfg.example?h=${hostname}", &[]),
            ("https://cfg.example#${hostname}", &[]),
            ("${hostname}://x/", &[]),
        ];
        for (src, want) in cases {
            assert_eq!(Template::parse(src).unwrap().host_vars(), *want, "{src}");
        }
    }

    #[test]
    fn vars_in_order() {
        let t = Template::parse("${mac}/x/${node}/${mac}").unwrap();
        assert_eq!(t.vars().collect::<Vec<_>>(), [Var::Mac, Var::Node, Var::Mac]);
    }

    #[test]
    fn every_byte_encodes_to_url_safe_text() {
        for b in 0u8..=0x7f {
            let s = char::from(b).to_string();
            let mut out = String::new();
            percent_encode_into(&s, &mut out);
            assert!(out.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~%".contains(&c)), "{b:#x} -> {out}");
        }
    }

    #[test]
    fn names_round_trip() {
        for v in Var::ALL {
            assert_eq!(Var::from_name(v.name()), Some(v));
            assert_eq!(v.to_string(), format!("${{{}}}", v.name()));
        }
    }
}
