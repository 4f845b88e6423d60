//! The incidents as an Atom feed (askama, `templates/status/feed.xml`, XML-escaped): one entry
//! per incident, newest first, its updates in the entry's text. The feed's `updated` is when
//! it was made, so a reader sees a feed that stopped updating.

use super::page::{time, TITLE};
use super::StatusSnapshot;
use askama::Template;

/// Most entries in the feed.
const MAX_ENTRIES: usize = 50;

struct EntryView {
    id: u64,
    title: String,
    state: &'static str,
    published: String,
    updated: String,
    content: String,
}

#[derive(Template)]
#[template(path = "status/feed.xml")]
struct FeedTemplate {
    title: &'static str,
    updated: String,
    page_href: &'static str,
    entries: Vec<EntryView>,
}

/// Renders the feed; `page_href` is where the HTML page is (relative to the feed).
pub fn render(s: &StatusSnapshot, page_href: &'static str) -> Result<String, askama::Error> {
    let entries = s
        .incidents
        .incidents
        .iter()
        .rev()
        .take(MAX_ENTRIES)
        .map(|i| {
            let mut content = format!("Components: {}\n", i.components.join(", "));
            for u in i.updates.iter().rev() {
                content.push_str(&format!("\n{} ({}): {}\n", time(u.at_ms), u.state, u.text));
            }
            EntryView {
                id: i.id,
                title: i.title.clone(),
                state: i.state.as_str(),
                published: time(i.opened_ms),
                updated: time(i.updates.last().map_or(i.opened_ms, |u| u.at_ms)),
                content,
            }
        })
        .collect();
    FeedTemplate {
        title: TITLE,
        updated: time(s.generated_ms),
        page_href,
        entries,
    }
    .render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_is_escaped_xml_and_says_when_it_was_made() {
        let xml = render(&crate::status::page::tests::hostile_snapshot(), "/status").unwrap();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>"));
        assert!(!xml.contains("<script>"), "{xml}");
        assert!(!xml.contains("<img"), "{xml}");
        assert!(
            xml.contains("[investigating] &#60;script&#62;alert(1)&#60;/script&#62; &#38;"),
            "{xml}"
        );
        assert!(
            xml.contains("<updated>2023-11-14T22:14:20Z</updated>"),
            "{xml}"
        );
        assert!(
            xml.contains("<id>urn:firebreak:status:incident:1</id>"),
            "{xml}"
        );
    }
}
