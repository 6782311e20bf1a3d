//! Every setting as a flag of `run` with its environment variable, from the
//! declarations: `#[command(flatten)] settings: SettingFlags`.

use super::{SETTINGS, Setting, Settings};

/// The settings given on the command line or in the environment.
#[derive(Debug, Clone, Default)]
pub struct SettingFlags {
    given: Vec<(&'static Setting, String)>,
}

impl SettingFlags {
    /// Apply the values given over `settings` (checked when parsed).
    pub fn apply(&self, settings: &mut Settings) {
        for (setting, text) in &self.given {
            (setting.set_text)(settings, text).expect("checked when parsed");
        }
    }
}

impl clap::FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<SettingFlags, clap::Error> {
        let given = SETTINGS
            .iter()
            .filter_map(|s| matches.get_one::<String>(s.key).map(|v| (s, v.clone())))
            .collect();
        Ok(SettingFlags { given })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = SettingFlags::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for SettingFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        command.args(SETTINGS.iter().map(|s| {
            clap::Arg::new(s.key)
                .long(s.flag)
                .env(s.env)
                .value_name(value_name(s))
                .help(format!("{} [default: {}]", s.summary(), s.default))
                .long_help(format!(
                    "{}\n\nDefault: {}. Config file key: `{}`.",
                    s.text(),
                    s.default,
                    s.key
                ))
                .value_parser(move |text: &str| s.check(text).map(|()| text.to_owned()))
        }))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        SettingFlags::augment_args(command)
    }
}

fn value_name(s: &Setting) -> &'static str {
    match s.written {
        w if w.starts_with("a duration") => "DURATION",
        w if w.starts_with("a size") => "SIZE",
        w if w.starts_with("a whole number") => "N",
        w if w.starts_with("true") => "BOOL",
        w if w.starts_with("a folder") => "DIR",
        _ => "WORD",
    }
}
