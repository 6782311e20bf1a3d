//! Which statements a plugin may not run: those that control the transaction
//! (the host owns it), and COPY. Only the first word is looked at, after
//! whitespace and comments skipped as PostgreSQL's own lexer skips them.

/// The first word of `statement` if it controls the transaction, or is
/// COPY (no data channel for plugins; `COPY ... FROM STDIN` would wait for
/// data the session never sends). Leading whitespace and comments are
/// skipped as PostgreSQL's lexer does: any of
/// space, tab, CR, LF, form feed and vertical tab; `--` up to CR or LF;
/// nested `/* */`. (A statement that hides transaction control anywhere else
/// is rejected by the server inside our transaction block, or is refused by
/// the extended protocol, which takes one statement only.)
pub(super) fn first_word_refused(statement: &str) -> Option<String> {
    let bytes = statement.as_bytes();
    let mut i = 0;
    loop {
        match bytes.get(i..) {
            Some([b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b, ..]) => i += 1,
            Some([b'-', b'-', ..]) => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            Some([b'/', b'*', ..]) => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => break,
        }
    }
    let word: String = statement[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    const CONTROL: &[&str] = &[
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",
        "COPY",
    ];
    CONTROL.contains(&word.as_str()).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised() {
        assert_eq!(first_word_refused(" commit").as_deref(), Some("COMMIT"));
        assert_eq!(
            first_word_refused("/* x */ -- y\n Rollback to s").as_deref(),
            Some("ROLLBACK")
        );
        assert_eq!(first_word_refused("INSERT INTO t VALUES (1)"), None);
        assert_eq!(
            first_word_refused("/* data */ copy t FROM STDIN").as_deref(),
            Some("COPY")
        );
        assert_eq!(first_word_refused("select 'commit'"), None);
        assert_eq!(
            first_word_refused("/* /* nested */ */ COMMIT").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(
            first_word_refused("-- x\rCOMMIT").as_deref(),
            Some("COMMIT")
        );
        assert_eq!(first_word_refused("\x0b\x0cend").as_deref(), Some("END"));
    }
}
