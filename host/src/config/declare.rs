//! The machinery that turns the one declaration of every setting (in
//! `mod.rs`) into the `Settings` struct and its defaults, the per-plugin
//! overrides of [`PluginPolicy`], the config file's keys, the command line's
//! flags and environment variables (see `main.rs`), and the reference docs.

/// Where a setting applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole host.
    Host,
    /// The whole host, and a plugin's section may override it.
    PerPlugin,
}

/// One setting, as the command line, the config file and the docs see it.
#[derive(Debug)]
pub struct Setting {
    /// The config file's key; with `-` for `_`, the flag.
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    /// The default, written as one would write it.
    pub default: &'static str,
    /// What a value looks like.
    pub written: &'static str,
    /// What it does (the reference's text).
    pub doc: &'static str,
    pub scope: Scope,
    /// Set it from text (a flag or an environment variable).
    pub set_text: fn(&mut super::Settings, &str) -> Result<(), String>,
    /// Set it from the config file's top level.
    pub set_toml: fn(&mut super::Settings, &toml::Value) -> Result<(), String>,
    /// Set it in a plugin's section (per-plugin settings only).
    pub set_plugin: Option<SetInSection>,
}

/// Sets a per-plugin setting in a plugin's section.
pub type SetInSection = fn(&mut super::PluginPolicy, &toml::Value) -> Result<(), String>;

impl Setting {
    /// Whether `text` is a value of this setting.
    pub fn check(&self, text: &str) -> Result<(), String> {
        (self.set_text)(&mut super::Settings::default(), text)
    }

    /// Its doc as one paragraph.
    pub fn text(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The first sentence of its doc, for `--help`.
    pub fn summary(&self) -> String {
        let text = self.text();
        match text.find(". ") {
            Some(i) => text[..=i].to_owned(),
            None => text,
        }
    }
}

/// A setting's key: its field's name, unless given.
macro_rules! key {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $key:literal) => {
        $key
    };
}

/// See the module doc; invoked once, in `mod.rs`.
macro_rules! declare_settings {
    (
        host {
            $( $(#[doc = $hdoc:literal])+
               $hfield:ident $(as $hkey:literal)? : $hkind:ty = $hdefault:literal,
               flag $hflag:literal, env $henv:literal; )*
        }
        per_plugin {
            $( $(#[doc = $pdoc:literal])+
               $pfield:ident $(as $pkey:literal)? : $pkind:ty = $pdefault:literal,
               flag $pflag:literal, env $penv:literal; )*
        }
        plugin_only {
            $( $(#[doc = $odoc:literal])+ $ofield:ident : $oty:ty, )*
        }
    ) => {
        /// The host's settings. Each one's flag, environment variable, config
        /// key and default are in [`SETTINGS`].
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $hdoc])+ pub $hfield: <$hkind as Kind>::Value, )*
            $( $(#[doc = $pdoc])+ pub $pfield: <$pkind as Kind>::Value, )*
            /// Per plugin (by manifest name): overrides and grants.
            pub plugins: BTreeMap<String, PluginPolicy>,
            /// The message buses plugins may be granted (`[sinks.NAME]`).
            pub sinks: BTreeMap<String, crate::sinks::SinkConfig>,
        }

        impl Default for Settings {
            fn default() -> Settings {
                Settings {
                    $( $hfield: <$hkind as Kind>::parse($hdefault)
                        .expect(concat!("the default of ", stringify!($hfield))), )*
                    $( $pfield: <$pkind as Kind>::parse($pdefault)
                        .expect(concat!("the default of ", stringify!($pfield))), )*
                    plugins: BTreeMap::new(),
                    sinks: BTreeMap::new(),
                }
            }
        }

        /// The operator's section for one plugin (`[plugins.NAME]`):
        /// overrides of the per-plugin settings, and what only a plugin has.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct PluginPolicy {
            $( $(#[doc = $pdoc])+ pub $pfield: Option<<$pkind as Kind>::Value>, )*
            $( $(#[doc = $odoc])+ pub $ofield: $oty, )*
        }

        /// A plugin section's own keys, as the file holds them.
        #[derive(Debug, Default, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct PluginOnly {
            $( $ofield: $oty, )*
        }

        impl PluginPolicy {
            fn from_only(only: PluginOnly) -> PluginPolicy {
                PluginPolicy {
                    $( $ofield: only.$ofield, )*
                    ..PluginPolicy::default()
                }
            }

            /// The host's settings with this section's overrides.
            fn over(&self, host: &Settings) -> Settings {
                Settings {
                    $( $hfield: host.$hfield.clone(), )*
                    $( $pfield: self.$pfield.clone().unwrap_or_else(|| host.$pfield.clone()), )*
                    plugins: BTreeMap::new(),
                    sinks: host.sinks.clone(),
                }
            }
        }

        /// Every setting (the reference docs and `--help` list them in this order).
        pub static SETTINGS: &[Setting] = &[
            $( Setting {
                key: key!($hfield $(, $hkey)?),
                flag: $hflag,
                env: $henv,
                default: $hdefault,
                written: <$hkind as Kind>::WRITTEN,
                doc: concat!($($hdoc, "\n"),+),
                scope: Scope::Host,
                set_text: |s, text| {
                    s.$hfield = <$hkind as Kind>::parse(text)?;
                    Ok(())
                },
                set_toml: |s, value| {
                    s.$hfield = <$hkind as Kind>::from_toml(value)?;
                    Ok(())
                },
                set_plugin: None,
            }, )*
            $( Setting {
                key: key!($pfield $(, $pkey)?),
                flag: $pflag,
                env: $penv,
                default: $pdefault,
                written: <$pkind as Kind>::WRITTEN,
                doc: concat!($($pdoc, "\n"),+),
                scope: Scope::PerPlugin,
                set_text: |s, text| {
                    s.$pfield = <$pkind as Kind>::parse(text)?;
                    Ok(())
                },
                set_toml: |s, value| {
                    s.$pfield = <$pkind as Kind>::from_toml(value)?;
                    Ok(())
                },
                set_plugin: Some(|p, value| {
                    p.$pfield = Some(<$pkind as Kind>::from_toml(value)?);
                    Ok(())
                }),
            }, )*
        ];

        /// The keys only a plugin's section has, with their docs.
        pub static PLUGIN_KEYS: &[(&str, &str)] = &[
            $( (stringify!($ofield), concat!($($odoc, "\n"),+)), )*
        ];
    };
}
