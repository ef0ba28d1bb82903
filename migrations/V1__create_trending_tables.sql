-- The tables the sink keeps in step with the topic (see design.md, "The database").

-- One row per video: the newest known state. A record only overwrites the row when it is at
-- least as new (last_fetched_at, then region_code as a tie-break), so replays in any order
-- converge to the same row.
CREATE TABLE videos (
    video_id               text        PRIMARY KEY,
    region_code            text        NOT NULL,  -- chart of the record that wrote the row
    rank                   integer     NOT NULL,  -- its rank in that chart
    title                  text,
    description            text,
    channel_id             text,
    channel_title          text,
    category_id            text,
    category_name          text,
    tags                   text[],
    published_at           timestamptz,
    default_language       text,
    default_audio_language text,
    live_broadcast_content text,
    thumbnail_url          text,
    duration_seconds       bigint,
    definition             text,
    dimension              text,
    caption                boolean,
    licensed_content       boolean,
    view_count             bigint,
    like_count             bigint,
    comment_count          bigint,
    favorite_count         bigint,
    first_seen_at          timestamptz NOT NULL,  -- earliest fetched_at of any record of it
    last_fetched_at        timestamptz NOT NULL   -- fetched_at of the record that wrote the row
);

-- The chart history: one row per video per region per poll.
CREATE TABLE video_snapshots (
    region_code    text        NOT NULL,
    fetched_at     timestamptz NOT NULL,
    video_id       text        NOT NULL,
    rank           integer     NOT NULL,
    view_count     bigint,
    like_count     bigint,
    comment_count  bigint,
    favorite_count bigint,
    PRIMARY KEY (region_code, fetched_at, video_id)
);

-- Rank history of one video (Grafana's trending dashboard).
CREATE INDEX video_snapshots_video_idx ON video_snapshots (video_id, fetched_at);
