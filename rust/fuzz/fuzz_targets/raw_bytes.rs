//! Every raw-bytes entry point of the core, fed arbitrary input: none may
//! panic, and every line written must be one valid JSON object ending in a
//! newline, because a broken line would corrupt a client's stream.
#![no_main]

use agentmark_gw_core::framing::{EnvelopeFolder, ExperimentFramer, PromptFramer};
use agentmark_gw_core::items::dataset_item_name;
use agentmark_gw_core::json::is_valid;
use agentmark_gw_core::signature::verify;
use agentmark_gw_core::wire::PromptKind;
use libfuzzer_sys::fuzz_target;

const KINDS: [PromptKind; 4] = [PromptKind::Text, PromptKind::Object, PromptKind::Image, PromptKind::Speech];

fn assert_lines(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert_eq!(out.last(), Some(&b'\n'), "output must end with a newline");
    for line in out[..out.len() - 1].split(|&b| b == b'\n') {
        let text = std::str::from_utf8(line).expect("lines are UTF-8");
        assert!(text.starts_with('{') && is_valid(text), "invalid line: {text}");
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest is split into messages, so one input
    // can exercise several batches of one stream.
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = if rest.is_empty() { 0 } else { split as usize % (rest.len() + 1) };
    let messages = [&rest[..cut], &rest[cut..]];

    for kind in KINDS {
        let mut framer = PromptFramer::new(kind);
        let mut folder = EnvelopeFolder::new(kind);
        for message in messages {
            assert_lines(&framer.feed(message));
            folder.feed(message);
        }
        assert_lines(&framer.close());
        let envelope = folder.close();
        if folder.error.is_none() {
            assert!(is_valid(std::str::from_utf8(&envelope).unwrap()));
        }
        assert_lines(&PromptFramer::new(kind).feed_event(rest));
    }
    let mut experiment = ExperimentFramer::new();
    for message in messages {
        assert_lines(&experiment.feed(message));
    }

    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = dataset_item_name(text, 0);
        let _ = is_valid(text);
        let _ = verify(&["secret"], text, rest);
    }
});
