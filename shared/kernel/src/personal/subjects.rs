//! The erasure record: one `_subjects/{subject}` stream per forgotten data subject, holding a
//! `SubjectForgotten` event (no personal data: the subject id and when). Registered by the
//! registry whenever the domain declares personal data, so the erasure shows in history, the
//! audit feed, anchors and on Kinesis like any other event.

use crate::aggregate::{Aggregate, DomainError, DomainEvent};
use crate::schema::EventSchema;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The erasure records' aggregate type (a leading `_`: Chronicle's own).
pub const SUBJECTS_TYPE: &str = "_subjects";
pub const SUBJECT_FORGOTTEN: &str = "SubjectForgotten";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// RFC 3339, as stored.
    #[serde(default)]
    pub forgotten_at: Option<String>,
}

/// Recorded by [`crate::Chronicle::forget`] only (an internal command: clients get 400).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SubjectCommand {
    /// The subject's key was destroyed at `forgotten_at`.
    Forget {
        #[serde(with = "crate::envelope::rfc3339")]
        #[schemars(with = "String")]
        forgotten_at: DateTime<Utc>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectForgotten {
    pub forgotten_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ForgottenData {
    #[serde(with = "crate::envelope::rfc3339")]
    forgotten_at: DateTime<Utc>,
}

impl DomainEvent for SubjectForgotten {
    fn event_type(&self) -> &'static str {
        SUBJECT_FORGOTTEN
    }

    fn to_data(&self) -> Value {
        json!({ "forgotten_at": crate::envelope::format_timestamp(&self.forgotten_at) })
    }

    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        if event_type != SUBJECT_FORGOTTEN {
            return Err(format!("unknown event type `{event_type}`"));
        }
        let d = ForgottenData::deserialize(data).map_err(|e| e.to_string())?;
        Ok(Self {
            forgotten_at: d.forgotten_at,
        })
    }
}

/// Never raised: forgetting twice records nothing the second time.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub enum Never {}

impl DomainError for Never {
    fn code(&self) -> &'static str {
        match *self {}
    }
}

/// What `GET /_subjects/{subject}` answers.
#[derive(Serialize, JsonSchema)]
pub struct SubjectView {
    pub subject: String,
    pub forgotten: bool,
    pub forgotten_at: Option<String>,
}

impl Aggregate for Subject {
    const TYPE: &'static str = SUBJECTS_TYPE;
    const STATE_VERSION: u32 = 1;
    const INTERNAL_COMMANDS: &'static [&'static str] = &["Forget"];
    type Command = SubjectCommand;
    type Event = SubjectForgotten;
    type Error = Never;
    type View = SubjectView;

    fn schema() -> EventSchema {
        EventSchema::new().event(SUBJECT_FORGOTTEN, 1)
    }

    fn decide(&self, command: &SubjectCommand) -> Result<Vec<SubjectForgotten>, Never> {
        let SubjectCommand::Forget { forgotten_at } = command;
        Ok(if self.forgotten_at.is_some() {
            Vec::new()
        } else {
            vec![SubjectForgotten {
                forgotten_at: *forgotten_at,
            }]
        })
    }

    fn evolve(&mut self, event: &SubjectForgotten) {
        self.forgotten_at = Some(crate::envelope::format_timestamp(&event.forgotten_at));
    }

    fn exists(&self) -> bool {
        self.forgotten_at.is_some()
    }

    fn view(&self, id: &str, _version: u64) -> SubjectView {
        SubjectView {
            subject: id.to_owned(),
            forgotten: self.forgotten_at.is_some(),
            forgotten_at: self.forgotten_at.clone(),
        }
    }
}
