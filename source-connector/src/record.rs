//! Maps one API video, at its rank in one region's chart, to the [`TrendingVideo`] record.
//! Absent API fields stay `None` (never 0 or ""); counts are parsed from the API's strings.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::TrendingVideo;

use crate::youtube::Video;

/// Thumbnail sizes the API documents, from smallest to largest: the order among thumbnails
/// that give no width. Larger ones (`fhd`, `qhd`, `uhd` per the API's revision history) come
/// with their width, which decides first.
const THUMBNAIL_SIZES: [&str; 5] = ["default", "medium", "high", "standard", "maxres"];

/// The records of one chart, ranked 1.. in the API's order, each carrying the chart's size.
/// A video the API lists twice (the chart can move between two page requests) is kept at its
/// first place only: one record per video, so that the chart is complete downstream exactly when
/// `chart_size` distinct videos are stored.
pub fn chart_records(
    videos: Vec<Video>,
    region: &str,
    fetched_at: DateTime<Utc>,
    categories: &HashMap<String, String>,
) -> Vec<TrendingVideo> {
    let mut seen = std::collections::HashSet::new();
    let videos: Vec<Video> = videos
        .into_iter()
        .filter(|v| seen.insert(v.id.clone()))
        .collect();
    let size = videos.len() as i32;
    videos
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let mut record = to_record(v, i as i32 + 1, region, fetched_at, categories);
            record.chart_size = Some(size);
            record
        })
        .collect()
}

pub fn to_record(
    video: Video,
    rank: i32,
    region: &str,
    fetched_at: DateTime<Utc>,
    categories: &HashMap<String, String>,
) -> TrendingVideo {
    let snippet = video.snippet.unwrap_or_else(empty_snippet);
    let details = video.content_details;
    let stats = video.statistics;
    let count = |f: fn(&crate::youtube::Statistics) -> &Option<String>| {
        stats
            .as_ref()
            .and_then(|s| f(s).as_deref())
            .and_then(|c| c.trim().parse::<i64>().ok())
    };
    // The largest offered: by width, then by documented size name, then by name (HashMap order
    // must not decide).
    let thumbnail_url = snippet
        .thumbnails
        .iter()
        .max_by_key(|(name, t)| {
            let known = THUMBNAIL_SIZES.iter().position(|s| s == name);
            (
                t.width.unwrap_or(0),
                known.map_or(0, |i| i + 1),
                name.as_str(),
            )
        })
        .map(|(_, t)| t.url.clone());
    let record = TrendingVideo {
        video_id: video.id,
        region_code: region.to_string(),
        // Avro timestamp-millis: what is stored is what is sent.
        fetched_at: DateTime::from_timestamp_millis(fetched_at.timestamp_millis())
            .unwrap_or(fetched_at),
        rank,
        category_name: snippet
            .category_id
            .as_ref()
            .and_then(|id| categories.get(id).cloned()),
        title: snippet.title,
        description: snippet.description,
        channel_id: snippet.channel_id,
        channel_title: snippet.channel_title,
        category_id: snippet.category_id,
        tags: snippet.tags,
        published_at: snippet.published_at,
        default_language: snippet.default_language,
        default_audio_language: snippet.default_audio_language,
        live_broadcast_content: snippet.live_broadcast_content,
        thumbnail_url,
        duration_seconds: details
            .as_ref()
            .and_then(|d| d.duration.as_deref())
            .and_then(parse_iso8601_duration),
        definition: details.as_ref().and_then(|d| d.definition.clone()),
        dimension: details.as_ref().and_then(|d| d.dimension.clone()),
        caption: details
            .as_ref()
            .and_then(|d| d.caption.as_deref())
            .and_then(|c| c.parse::<bool>().ok()),
        licensed_content: details.as_ref().and_then(|d| d.licensed_content),
        view_count: count(|s| &s.view_count),
        like_count: count(|s| &s.like_count),
        comment_count: count(|s| &s.comment_count),
        favorite_count: count(|s| &s.favorite_count),
        chart_size: None,
    };
    without_nul(record)
}

/// The record with every NUL character (U+0000) removed from its texts. User-written text
/// (titles, descriptions, tags) may hold one, and PostgreSQL's `text` cannot store it: sent
/// as is, the sink would dead-letter the video and its chart would never be whole.
fn without_nul(mut r: TrendingVideo) -> TrendingVideo {
    let strip = |s: &mut String| {
        if s.contains('\0') {
            s.retain(|c| c != '\0');
        }
    };
    strip(&mut r.video_id);
    for text in [
        &mut r.title,
        &mut r.description,
        &mut r.channel_id,
        &mut r.channel_title,
        &mut r.category_id,
        &mut r.category_name,
        &mut r.default_language,
        &mut r.default_audio_language,
        &mut r.live_broadcast_content,
        &mut r.thumbnail_url,
        &mut r.definition,
        &mut r.dimension,
    ]
    .into_iter()
    .flatten()
    {
        strip(text);
    }
    r.tags.iter_mut().flatten().for_each(strip);
    r
}

fn empty_snippet() -> crate::youtube::Snippet {
    serde_json::from_str("{}").expect("every snippet field is optional")
}

/// Seconds in an ISO 8601 duration as the API writes them: `PT4M13S`, `PT1H`, `P1DT2H3M`,
/// `P0D` (live streams), `P1W`. Years and months have no fixed length and are refused, as is
/// anything malformed: the field is then null rather than wrong.
pub fn parse_iso8601_duration(s: &str) -> Option<i64> {
    let rest = s.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total: i64 = 0;
    let mut add = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut number = String::new();
        let mut last_unit = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let idx = units.iter().position(|(u, _)| *u == c)?;
            if idx < last_unit || number.is_empty() {
                return None;
            }
            last_unit = idx + 1;
            let value: f64 = number.parse().ok()?;
            total = total.checked_add((value * units[idx].1 as f64).round() as i64)?;
            number.clear();
        }
        number.is_empty().then_some(())
    };
    add(date, &[('W', 604_800), ('D', 86_400)])?;
    if let Some(t) = time {
        add(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::youtube::VideoListResponse;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_iso8601_duration("PT4M13S"), Some(253));
        assert_eq!(parse_iso8601_duration("PT1H"), Some(3600));
        assert_eq!(parse_iso8601_duration("P1DT2H3M"), Some(93_780));
        assert_eq!(parse_iso8601_duration("P1DT2H"), Some(93_600));
        assert_eq!(parse_iso8601_duration("P0D"), Some(0));
        assert_eq!(parse_iso8601_duration("PT45S"), Some(45));
        assert_eq!(parse_iso8601_duration("P1W"), Some(604_800));
        assert_eq!(parse_iso8601_duration("PT1.5S"), Some(2));
        for bad in [
            "", "P", "PT", "4M13S", "PT4X", "PT13S4M", "P1Y", "P1M", "PTM",
        ] {
            assert_eq!(parse_iso8601_duration(bad), None, "{bad}");
        }
    }

    fn page(json: &str) -> VideoListResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_video_listed_twice_is_kept_once_and_each_record_carries_the_chart_size() {
        let p = page(r#"{"items":[{"id":"a"},{"id":"b"},{"id":"a"},{"id":"c"}]}"#);
        let records = chart_records(p.items, "FR", Utc::now(), &HashMap::new());
        let got: Vec<(&str, i32, Option<i32>)> = records
            .iter()
            .map(|r| (r.video_id.as_str(), r.rank, r.chart_size))
            .collect();
        assert_eq!(
            got,
            [("a", 1, Some(3)), ("b", 2, Some(3)), ("c", 3, Some(3))]
        );
    }

    #[test]
    fn a_full_item_maps_every_field() {
        let p = page(
            r#"{"items":[{"id":"abc","snippet":{"publishedAt":"2026-11-24T17:00:08Z",
              "channelId":"UC1","title":"Été 🎉","description":"d","channelTitle":"C",
              "tags":["a","b"],"categoryId":"10","liveBroadcastContent":"none",
              "defaultLanguage":"fr","defaultAudioLanguage":"fr-FR",
              "thumbnails":{"default":{"url":"https://i/d.jpg","width":120},
                            "high":{"url":"https://i/h.jpg","width":480}}},
              "contentDetails":{"duration":"PT4M13S","dimension":"2d","definition":"hd",
                                "caption":"true","licensedContent":false},
              "statistics":{"viewCount":"1234567","likeCount":"89","favoriteCount":"0",
                            "commentCount":"12"}}]}"#,
        );
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let cats = HashMap::from([("10".to_string(), "Music".to_string())]);
        let r = chart_records(p.items, "FR", at, &cats).remove(0);
        assert_eq!(r.rank, 1);
        assert_eq!(r.fetched_at.timestamp_millis(), at.timestamp_millis());
        assert_eq!(r.fetched_at.timestamp_subsec_micros(), 123_000);
        assert_eq!(r.title.as_deref(), Some("Été 🎉"));
        assert_eq!(r.category_name.as_deref(), Some("Music"));
        assert_eq!(r.thumbnail_url.as_deref(), Some("https://i/h.jpg"));
        assert_eq!(r.duration_seconds, Some(253));
        assert_eq!(r.caption, Some(true));
        assert_eq!(r.licensed_content, Some(false));
        assert_eq!(r.view_count, Some(1_234_567));
        assert_eq!(r.favorite_count, Some(0));
        assert_eq!(r.tags, Some(vec!["a".into(), "b".into()]));
        r.validate().unwrap();
    }

    #[test]
    fn the_thumbnail_is_the_widest_offered() {
        let p = page(
            r#"{"items":[{"id":"a","snippet":{"thumbnails":{
                "maxres":{"url":"https://i/maxres.jpg","width":1280,"height":720},
                "uhd":{"url":"https://i/uhd.jpg","width":3840,"height":2160},
                "high":{"url":"https://i/h.jpg","width":480}}}},
              {"id":"b","snippet":{"thumbnails":{
                "high":{"url":"https://i/h.jpg"},"maxres":{"url":"https://i/m.jpg"},
                "default":{"url":"https://i/d.jpg"}}}}]}"#,
        );
        let rs = chart_records(p.items, "FR", Utc::now(), &HashMap::new());
        assert_eq!(rs[0].thumbnail_url.as_deref(), Some("https://i/uhd.jpg"));
        assert_eq!(
            rs[1].thumbnail_url.as_deref(),
            Some("https://i/m.jpg"),
            "without widths, the largest documented size"
        );
    }

    #[test]
    fn nul_characters_in_the_api_text_are_removed() {
        let p = page(
            r#"{"items":[{"id":"a","snippet":{"title":"Ti\u0000tle","description":"\u0000d",
              "channelTitle":"C\u0000","tags":["t\u0000ag","ok"]}}]}"#,
        );
        let r = chart_records(p.items, "FR", Utc::now(), &HashMap::new()).remove(0);
        assert_eq!(r.title.as_deref(), Some("Title"));
        assert_eq!(r.description.as_deref(), Some("d"));
        assert_eq!(r.channel_title.as_deref(), Some("C"));
        assert_eq!(r.tags, Some(vec!["tag".into(), "ok".into()]));
        r.validate().unwrap();
    }

    #[test]
    fn absent_fields_are_none_never_zero_or_empty() {
        let p = page(
            r#"{"items":[{"id":"x","snippet":{"title":"t","categoryId":"99"},
              "contentDetails":{"duration":"P0D"},"statistics":{"viewCount":"5"}},
              {"id":"y"}]}"#,
        );
        let rs = chart_records(p.items, "US", Utc::now(), &HashMap::new());
        let r = &rs[0];
        assert_eq!(r.like_count, None);
        assert_eq!(r.comment_count, None);
        assert_eq!(r.tags, None);
        assert_eq!(r.default_language, None);
        assert_eq!(r.category_name, None, "unknown category id");
        assert_eq!(r.duration_seconds, Some(0));
        assert_eq!(rs[1].rank, 2);
        assert_eq!(rs[1].title, None);
        assert_eq!(rs[1].view_count, None);
    }
}
