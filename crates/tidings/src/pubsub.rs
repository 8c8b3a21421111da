//! `tidings pub` and `tidings sub`: thin commands over the client SDK.

use std::collections::HashMap;
use std::io::{self, Write};

use anyhow::{Context, bail};
use tidings_client::{
    Client, ClientConfig, ClientEvent, Publication, PublishOptions, SinceArg, SubEvent,
    SubscribeOptions,
};
use tokio::sync::broadcast::error::RecvError;

/// Subscribes to `channels` and prints one JSON line per publication on
/// stdout: `{"channel","offset","epoch","data"}` (`offset` and `epoch` are
/// left out in ephemeral channels). Losses (`NotRecovered`), disconnects and
/// reconnects are reported on stderr. Runs until Ctrl-C, or until every
/// subscription has ended (an error then).
///
/// `since` is `"offset:epoch"` and applies to every channel.
pub async fn run_sub(
    url: String,
    token: Option<String>,
    channels: Vec<String>,
    since: Option<String>,
) -> anyhow::Result<()> {
    if channels.is_empty() {
        bail!("name at least one channel");
    }
    let since = since.as_deref().map(parse_since).transpose()?;
    let client = connect(url, token).await?;
    let mut conn_events = client.events();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, SubEvent)>();
    for channel in &channels {
        let mut sub = client
            .subscribe(
                channel,
                SubscribeOptions {
                    since: since.clone(),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("subscribing to {channel}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.next().await {
                if tx.send((sub.channel().to_string(), event)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // The current epoch of each channel: a publication belongs to the latest
    // `Subscribed` or `NotRecovered` epoch.
    let mut epochs: HashMap<String, String> = HashMap::new();
    let mut stdout = io::stdout();
    let result = loop {
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            event = rx.recv() => match event {
                None => break Err(anyhow::anyhow!("every subscription has ended")),
                Some((channel, event)) => match event {
                    SubEvent::Subscribed { recovered, offset, epoch } => {
                        if let Some(epoch) = &epoch {
                            epochs.insert(channel.clone(), epoch.clone());
                        }
                        eprintln!(
                            "tidings: subscribed to {channel}{}{}",
                            offset.map_or_else(String::new, |o| format!(" at offset {o}")),
                            match recovered {
                                Some(true) => " (recovered)",
                                Some(false) => " (not recovered)",
                                None => "",
                            }
                        );
                    }
                    SubEvent::Publication(p) | SubEvent::Snapshot(p) => {
                        let line = publication_line(&channel, epochs.get(&channel), &p);
                        if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                            if e.kind() == io::ErrorKind::BrokenPipe {
                                break Ok(());
                            }
                            break Err(e).context("writing to stdout");
                        }
                    }
                    SubEvent::NotRecovered { offset, epoch } => {
                        eprintln!(
                            "tidings: {channel}: publications lost (not recovered); \
                             continuing after offset {offset} in epoch {epoch}"
                        );
                        epochs.insert(channel, epoch);
                    }
                    SubEvent::Join(_) | SubEvent::Leave(_) | SubEvent::Receipt(_) => {}
                    SubEvent::Unsubscribed { code, reason } => {
                        eprintln!("tidings: {channel}: unsubscribed by the server ({code}: {reason})");
                    }
                },
            },
            event = conn_events.recv() => match event {
                Ok(ClientEvent::Disconnected { code, reason, reconnect }) => {
                    let code = code.map_or_else(|| "no code".to_string(), |c| c.to_string());
                    eprintln!(
                        "tidings: disconnected ({code}: {reason}){}",
                        if reconnect { "; reconnecting" } else { "" }
                    );
                }
                Ok(ClientEvent::Reconnecting { attempt, delay }) => {
                    eprintln!("tidings: reconnect attempt {attempt} in {} ms", delay.as_millis());
                }
                Ok(ClientEvent::Connected { client }) => {
                    eprintln!("tidings: connected as {client}");
                }
                Err(RecvError::Lagged(_)) => {}
                // The client task ended; the subscription streams end too.
                Err(RecvError::Closed) => {}
            },
        }
    };
    client.close().await;
    result
}

/// Publishes `data` into `channel` and prints the answer
/// (`{"offset":..,"epoch":..}`, `{}` in ephemeral channels). `data` is sent
/// as is when it is valid JSON, else as a JSON string. It subscribes to the
/// channel first, so namespaces open to subscribers only accept it.
pub async fn run_pub(
    url: String,
    token: Option<String>,
    channel: String,
    data: String,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    let client = connect(url, token).await?;
    // Join the channel first, as a chat client does: namespaces with
    // `client_publish = "subscribers"` (the default) accept only members.
    // Where joining is refused, the publish itself says whether it may go.
    let _membership = client
        .subscribe(&channel, SubscribeOptions::default())
        .await
        .ok();
    let opts = PublishOptions {
        idempotency_key,
        ..Default::default()
    };
    let result = if serde_json::from_str::<serde_json::Value>(&data).is_ok() {
        client.publish_raw(&channel, &data, opts).await
    } else {
        client
            .publish(&channel, &serde_json::Value::String(data), opts)
            .await
    };
    client.close().await;
    let ok = result.with_context(|| format!("publishing to {channel}"))?;
    println!("{}", serde_json::to_string(&ok)?);
    Ok(())
}

async fn connect(url: String, token: Option<String>) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(url.clone());
    if let Some(token) = token {
        config = config.token(token);
    }
    Client::connect(config)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Parses `"offset:epoch"`.
fn parse_since(s: &str) -> anyhow::Result<SinceArg> {
    let (offset, epoch) = s
        .split_once(':')
        .with_context(|| format!("--since must be OFFSET:EPOCH, got {s:?}"))?;
    let offset = offset
        .trim()
        .parse()
        .with_context(|| format!("--since: bad offset {offset:?}"))?;
    if epoch.is_empty() {
        bail!("--since: the epoch is empty");
    }
    Ok(SinceArg {
        offset,
        epoch: epoch.to_string(),
    })
}

/// `{"channel":..,"offset":..,"epoch":..,"data":..}` with `data` as published.
fn publication_line(channel: &str, epoch: Option<&String>, p: &Publication) -> String {
    let mut line = format!("{{\"channel\":{}", json_string(channel));
    if let Some(offset) = p.offset {
        line.push_str(&format!(",\"offset\":{offset}"));
        if let Some(epoch) = epoch {
            line.push_str(&format!(",\"epoch\":{}", json_string(epoch)));
        }
    }
    line.push_str(&format!(",\"data\":{}}}", p.data.get()));
    line
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_since() {
        let s = parse_since("12:ab:c").unwrap();
        assert_eq!((s.offset, s.epoch.as_str()), (12, "ab:c"));
        assert!(parse_since("12").is_err());
        assert!(parse_since("x:e").is_err());
        assert!(parse_since("3:").is_err());
    }

    #[test]
    fn prints_publications() {
        let p: Publication = serde_json::from_str(r#"{"offset":3,"data":{"a": 1}}"#).unwrap();
        let line = publication_line("chat:a", Some(&"e1".to_string()), &p);
        assert_eq!(
            line,
            r#"{"channel":"chat:a","offset":3,"epoch":"e1","data":{"a": 1}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["data"]["a"], 1);
        let p: Publication = serde_json::from_str(r#"{"data":"x"}"#).unwrap();
        assert_eq!(
            publication_line("a", None, &p),
            r#"{"channel":"a","data":"x"}"#
        );
    }
}
