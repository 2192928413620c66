//! `tandem webhook add|list|remove|log`: webhook registrations and their delivery logs, in the
//! database or through the running server's webhook API, whichever [`Backend`] opens.

use super::CommandError;
use super::backend::Backend;
use crate::cli::{Target, WebhookAddArgs, WebhookIdArgs};
use crate::webhook::NewWebhook;

/// Registers a webhook; prints its id and its signing secret (shown only here).
pub(super) async fn add(args: WebhookAddArgs) -> Result<String, CommandError> {
    let request = NewWebhook {
        url: args.url,
        events: args.events,
        secret: args.secret,
        docs: args.docs,
    };
    let backend = Backend::open(&args.target).await?;
    let (id, secret) = backend.add_webhook(request).await?;
    Ok(format!(
        "added webhook {id}{}\nsecret {secret}",
        backend.via()
    ))
}

/// Lists the webhooks, one per line: id, URL, events, doc pattern.
pub(super) async fn list(target: &Target) -> Result<String, CommandError> {
    let webhooks = Backend::open(target).await?.list_webhooks().await?;
    if webhooks.is_empty() {
        return Ok("no webhooks".into());
    }
    let lines: Vec<String> = webhooks
        .iter()
        .map(|hook| {
            format!(
                "{}  {}  {}  {}",
                hook.id,
                hook.url,
                hook.events.join(","),
                hook.docs.as_deref().unwrap_or("*")
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Removes a webhook; one that does not exist is an error.
pub(super) async fn remove(args: WebhookIdArgs) -> Result<String, CommandError> {
    let removed = Backend::open(&args.target)
        .await?
        .remove_webhook(&args.id)
        .await?;
    if !removed {
        return Err(CommandError::NoSuchWebhook(args.id));
    }
    Ok(format!("removed webhook {}", args.id))
}

/// A webhook's delivery attempts, newest first, one per line.
pub(super) async fn log(args: WebhookIdArgs) -> Result<String, CommandError> {
    let Some(attempts) = Backend::open(&args.target)
        .await?
        .webhook_log(&args.id)
        .await?
    else {
        return Err(CommandError::NoSuchWebhook(args.id));
    };
    if attempts.is_empty() {
        return Ok("no deliveries yet".into());
    }
    let lines: Vec<String> = attempts
        .iter()
        .map(|attempt| {
            let answer = match (&attempt.status, &attempt.error) {
                (Some(status), _) => status.to_string(),
                (None, Some(error)) => error.clone(),
                (None, None) => "-".into(),
            };
            format!(
                "{}  {}  {}  {}  {} ms  {}",
                attempt.at_ms,
                attempt.delivery_id,
                attempt.event,
                answer,
                attempt.duration_ms,
                attempt.outcome
            )
        })
        .collect();
    Ok(lines.join("\n"))
}
