//! A short koda session on the default backend (an SQLite file), then what a
//! user wants to see: the session list, the context the model would get,
//! usage per agent, and whether the last turn was interrupted.
//!
//! ```text
//! cargo run --example quickstart                    # sqlite://koda-quickstart.db
//! cargo run --example quickstart -- memory:         # any store URL
//! ```

use std::path::Path;

use anyhow::Result;
use koda_persistence::{Role, TokenUsage, detect_interruption};

fn usage(prompt: i64, completion: i64) -> TokenUsage {
    TokenUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cache_read_tokens: prompt / 2,
        cache_creation_tokens: 0,
        thinking_tokens: completion / 4,
    }
}

fn preview(text: Option<&str>) -> String {
    let text = text.unwrap_or("∅").replace('\n', " ⏎ ");
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() { format!("{short}…") } else { short }
}

#[tokio::main]
async fn main() -> Result<()> {
    // Logs go to stderr, filtered by RUST_LOG (e.g. RUST_LOG=koda_persistence=debug
    // shows every store call with its duration); warnings only by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let url = std::env::args().nth(1).unwrap_or_else(|| "sqlite://koda-quickstart.db".to_owned());
    let store = koda_persistence::open(&url).await?;
    let root = std::env::current_dir()?;
    println!("store: {url}\nproject: {}\n", root.display());

    let s = store.create_session("main", &root).await?;
    store.set_session_title(&s, "Add a --verbose flag").await?;
    store.set_session_mode(&s, "auto-edit").await?;

    // Turn 1: the model reads a file, then answers.
    store.insert_message(&s, &Role::User, Some("Add a --verbose flag to the CLI"), None, None, None).await?;
    let calls = r#"[{"id":"call_1","type":"function","function":{"name":"read_file","arguments":"{\"path\":\"src/main.rs\"}"}}]"#;
    let a = store
        .insert_message(
            &s,
            &Role::Assistant,
            Some("Let me look at main.rs."),
            Some(calls),
            None,
            Some(&usage(1_200, 40)),
        )
        .await?;
    store.mark_message_complete(a).await?;
    store
        .insert_tool_message_with_full(
            &s,
            "main.rs: 120 lines (clap parser at line 12)",
            "call_1",
            "fn main() {\n    let args = Args::parse();\n    …\n}",
        )
        .await?;
    let a = store
        .insert_message(
            &s,
            &Role::Assistant,
            Some("Added `-v/--verbose` to Args and wired it to the logger."),
            None,
            None,
            Some(&usage(1_500, 220)),
        )
        .await?;
    store.mark_message_complete(a).await?;

    // A sub-agent reviews the change.
    let r = store
        .insert_message_with_agent(
            &s,
            &Role::Assistant,
            Some("Review: looks good; add a test."),
            None,
            None,
            Some(&usage(900, 60)),
            Some("reviewer"),
        )
        .await?;
    store.mark_message_complete(r).await?;

    // Turn 2, then compaction keeps the last three messages.
    store.insert_message(&s, &Role::User, Some("Now add a test for it"), None, None, None).await?;
    let a = store
        .insert_message(&s, &Role::Assistant, Some("Added tests/verbose.rs."), None, None, Some(&usage(2_100, 180)))
        .await?;
    store.mark_message_complete(a).await?;
    let compacted = store.compact_session(&s, "Summary: added --verbose to the CLI and reviewed it.", 3).await?;
    store.set_todo(&s, "- [x] --verbose flag\n- [ ] document it in README").await?;

    // Turn 3 is cut off mid-stream: never marked complete.
    store.insert_message(&s, &Role::User, Some("Document the flag in the README"), None, None, None).await?;
    store.insert_message(&s, &Role::Assistant, Some("I'll add a section to the READ"), None, None, None).await?;

    println!("Sessions under {}:", root.display());
    for info in store.list_sessions(5, Path::new(&root)).await? {
        println!(
            "  {}  {}  {:<24} {:>3} messages {:>6} tokens  mode={}",
            info.created_at,
            &info.id[..8.min(info.id.len())],
            info.title.as_deref().unwrap_or("(untitled)"),
            info.message_count,
            info.total_tokens,
            info.mode.as_deref().unwrap_or("-"),
        );
    }

    let context = store.load_context(&s).await?;
    println!("\nContext for the next model call ({compacted} messages compacted away):");
    for m in &context {
        println!("  #{:<4} {:<9} {}", m.id, m.role.as_str(), preview(m.content.as_deref()));
    }

    println!("\nUsage by agent:");
    for (agent, u) in store.session_usage_by_agent(&s).await? {
        println!(
            "  {agent:<10} {:>3} calls  {:>6} prompt  {:>5} completion  {:>5} cache-read  {:>4} thinking",
            u.api_calls, u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.thinking_tokens
        );
    }
    let total = store.session_token_usage(&s).await?;
    println!(
        "  {:<10} {:>3} calls  {:>6} prompt  {:>5} completion",
        "total", total.api_calls, total.prompt_tokens, total.completion_tokens
    );

    println!("\nTODO:\n{}", store.get_todo(&s).await?.unwrap_or_default());
    match detect_interruption(&context) {
        Some(koda_persistence::InterruptionKind::Prompt(p)) => {
            println!("\nLast turn was interrupted: the prompt {p:?} was never answered. Type `continue` or rephrase.")
        }
        Some(koda_persistence::InterruptionKind::Tool) => {
            println!("\nLast turn was interrupted: a tool result was never processed.")
        }
        None => println!("\nThe last turn completed."),
    }
    if url.starts_with("sqlite://") {
        println!(
            "\nInspect it: sqlite3 {} 'SELECT id, role, substr(content, 1, 40) FROM messages'",
            url.trim_start_matches("sqlite://")
        );
    }
    Ok(())
}
