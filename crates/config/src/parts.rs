//! The parts a fleet configuration is stored and shipped in: the fleet document (everything
//! but the services) and one document per service. Each part may hold only what it is for: a
//! service's document exactly one `[[service]]` table, named as the part says, and nothing
//! fleet-wide; the fleet document no service. The control plane checks every part before it
//! stores a version, and each edge checks them again before composing, with this same code.

use crate::load::{ConfigError, ConfigRejected};
use crate::locate::line_col;
use toml_edit::{Document, Item};

fn error(
    file: &str,
    text: &str,
    offset: Option<usize>,
    field: &str,
    message: String,
) -> ConfigError {
    let (line, column) = offset.map(|o| line_col(text, o)).unwrap_or((0, 0));
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        field: field.to_owned(),
        message,
    }
}

fn parse<'a>(file: &str, text: &'a str) -> Result<Document<&'a str>, ConfigRejected> {
    Document::parse(text).map_err(|e| ConfigRejected {
        errors: vec![error(
            file,
            text,
            e.span().map(|s| s.start),
            "",
            e.message().to_owned(),
        )],
    })
}

/// Where a top-level key starts (its header or its key).
fn key_offset(doc: &Document<&str>, key: &str) -> Option<usize> {
    let (k, item) = doc.as_table().get_key_value(key)?;
    k.span().or_else(|| item.span()).map(|s| s.start)
}

/// Checks that `text` is service `name`'s document: one `[[service]]` table whose `name` is
/// `name`, and no other top-level table or key (fleet-wide sections such as `[limits]` belong
/// to the fleet document). Errors read `file:line:column: field: message`.
pub fn check_service_document(file: &str, name: &str, text: &str) -> Result<(), ConfigRejected> {
    let doc = parse(file, text)?;
    let mut errors = Vec::new();
    for (key, _) in doc.as_table().iter() {
        if key != "service" {
            errors.push(error(
                file,
                text,
                key_offset(&doc, key),
                key,
                format!(
                    "service `{name}`'s document may define only its own `[[service]]`; `{key}` is fleet-wide and belongs in the fleet document"
                ),
            ));
        }
    }
    let tables: Vec<&toml_edit::Table> = match doc.as_table().get("service") {
        Some(Item::ArrayOfTables(a)) => a.iter().collect(),
        _ => Vec::new(),
    };
    match tables.as_slice() {
        [one] => {
            let named = one.get("name").and_then(Item::as_str);
            if named != Some(name) {
                let offset = one
                    .get("name")
                    .and_then(Item::span)
                    .or_else(|| one.span())
                    .map(|s| s.start);
                errors.push(error(
                    file,
                    text,
                    offset,
                    "service[0].name",
                    format!(
                        "this is service `{name}`'s document; it cannot define {}",
                        named.map_or("a service without a name".to_owned(), |n| format!(
                            "service `{n}`"
                        ))
                    ),
                ));
            }
        }
        many => {
            let offset = many
                .get(1)
                .and_then(|t| t.span())
                .map(|s| s.start)
                .or_else(|| key_offset(&doc, "service"));
            errors.push(error(
                file,
                text,
                offset,
                "service",
                format!(
                    "service `{name}`'s document must hold exactly one `[[service]]` table, found {}",
                    many.len()
                ),
            ));
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigRejected { errors })
    }
}

/// Checks that the fleet document defines no service (services travel in their own
/// documents).
pub fn check_fleet_document(file: &str, text: &str) -> Result<(), ConfigRejected> {
    let doc = parse(file, text)?;
    if doc.as_table().contains_key("service") {
        return Err(ConfigRejected {
            errors: vec![error(
                file,
                text,
                key_offset(&doc, "service"),
                "service",
                "the fleet document may not define services; each service has its own document"
                    .to_owned(),
            )],
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_service_document_holds_only_its_service() {
        let ok =
            "[[service]]\nname = \"a\"\nhosts = [\"a.test\"]\n[service.origin]\nservers = []\n";
        assert!(check_service_document("f", "a", ok).is_ok());

        let limits = format!("{ok}[limits]\nmax_connections = 5\n");
        let e = check_service_document("f", "a", &limits).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].field, "limits");
        assert_eq!((e.errors[0].line, e.errors[0].column), (6, 2));
        assert!(
            e.to_string()
                .starts_with("f:6:2: limits: service `a`'s document"),
            "{e}"
        );

        let other = ok.replace("name = \"a\"", "name = \"b\"");
        let e = check_service_document("f", "a", &other).unwrap_err();
        assert_eq!(e.errors[0].field, "service[0].name");
        assert_eq!(e.errors[0].line, 2);
        assert!(e.to_string().contains("cannot define service `b`"), "{e}");

        let two = format!("{ok}[[service]]\nname = \"b\"\n");
        let e = check_service_document("f", "a", &two).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");

        let top_key = format!("edge_token = \"x\"\n{ok}");
        assert!(check_service_document("f", "a", &top_key).is_err());
        assert!(check_service_document("f", "a", "not toml [").is_err());
    }

    #[test]
    fn the_fleet_document_holds_no_service() {
        assert!(check_fleet_document("f", "[cache]\nmax_bytes = 1\n").is_ok());
        let e = check_fleet_document("f", "[cache]\n[[service]]\nname = \"a\"\n").unwrap_err();
        assert_eq!(e.errors[0].field, "service");
        assert_eq!(e.errors[0].line, 2);
    }
}
