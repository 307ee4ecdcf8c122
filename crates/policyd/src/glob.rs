//! Shell-style globs for image and label selectors: `*` matches any run of
//! characters (including `/` and `:`, so `nginx:*` matches every tag and
//! `*/nginx:*` every registry), `?` matches one character, and `\` makes the
//! next character literal. No character classes: image references do not
//! need them, and fewer metacharacters mean fewer surprises.

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
}

impl Glob {
    /// Compiles a pattern. Fails only on a trailing lone `\`.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyOne,
                '\\' => match chars.next() {
                    Some(escaped) => Token::Literal(escaped),
                    None => return Err("pattern ends with a lone `\\` (escape what?)".into()),
                },
                other => Token::Literal(other),
            });
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has any wildcard (a literal pattern matches one string).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Matches the whole of `text`. Iterative with one backtrack point, so
    /// linear-ish and never exponential on hostile input.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut t, mut p) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    backtrack = Some((p, t));
                    p += 1;
                }
                Some(Token::AnyOne) => (t, p) = (t + 1, p + 1),
                Some(Token::Literal(c)) if *c == text[t] => (t, p) = (t + 1, p + 1),
                _ => {
                    // Let the last `*` take one more character.
                    let Some((star_p, star_t)) = backtrack else {
                        return false;
                    };
                    (p, t) = (star_p + 1, star_t + 1);
                    backtrack = Some((star_p, star_t + 1));
                }
            }
        }
        self.tokens[p..]
            .iter()
            .all(|tok| matches!(tok, Token::AnyRun))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn image_globs() {
        assert!(m("nginx:*", "nginx:1.25"));
        assert!(m("nginx:*", "nginx:"));
        assert!(!m("nginx:*", "nginx"));
        assert!(!m("nginx:*", "my/nginx:1"));
        assert!(m("*/nginx:*", "docker.io/library/nginx:latest"));
        assert!(m("*", ""));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("a*b*c", "aXXbYYc") && !m("a*b*c", "aXXbYY"));
        assert!(m(r"a\*", "a*") && !m(r"a\*", "ab"));
        assert!(Glob::new("a\\").is_err());
        assert!(Glob::new("nginx:1.25").unwrap().is_literal());
    }

    #[test]
    fn no_blowup_on_many_stars() {
        let pattern = "*a".repeat(30) + "b";
        let text = "a".repeat(200);
        assert!(!m(&pattern, &text));
    }
}
