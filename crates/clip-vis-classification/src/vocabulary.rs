//! Vocabularies: the category names a video is labelled with.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a vocabulary could not be built. Each names where the bad entry came from.
#[derive(Debug, thiserror::Error)]
pub enum VocabularyError {
    /// No categories at all.
    #[error("{origin}: the vocabulary is empty")]
    Empty {
        /// Where the vocabulary came from (a file path or "--vocab").
        origin: String,
    },
    /// A category (or one of its synonyms) is empty or only whitespace.
    #[error("{origin}: entry {entry} ({text:?}) is empty or only whitespace")]
    BlankEntry {
        /// Where the vocabulary came from.
        origin: String,
        /// 1-based entry (line or list position).
        entry: usize,
        /// The offending text.
        text: String,
    },
    /// The file could not be read.
    #[error("cannot read vocabulary file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A dataset json without a usable `categories` list.
    #[error("{path}: not a dataset json with a `categories` list: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// An unknown built-in name.
    #[error(
        "unknown built-in vocabulary {0:?} (known: lvvis, ytvis19, ytvis21, ovis, coco, lvis)"
    )]
    UnknownBuiltin(String),
}

/// One category.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Category {
    /// The name as given (LV-VIS names keep their underscores, as CLIP-VIS uses them).
    pub name: String,
    /// The words prompted for it; its logit is the best of theirs.
    pub synonyms: Vec<String>,
    /// The id to write in results: the dataset's id for a dataset vocabulary, else the
    /// 1-based position.
    pub id: u64,
    /// LV-VIS partition (0/1 base, 2/3 novel) when known.
    pub partition: Option<u8>,
}

/// An ordered list of categories. Results name category `i` (0-based) by `categories[i].id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vocabulary {
    /// The categories, in label order.
    pub categories: Vec<Category>,
}

/// The vocabularies shipped with clip-vis (names from the official dataset code; see
/// `data/SOURCES.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinVocabulary {
    /// LV-VIS, 1196 categories with base/novel partitions.
    Lvvis,
    /// YouTube-VIS 2019, 40 categories.
    Ytvis19,
    /// YouTube-VIS 2021, 40 categories.
    Ytvis21,
    /// OVIS, 25 categories.
    Ovis,
    /// COCO, 80 thing categories (ids are positions 1..=80, not COCO's sparse ids).
    Coco,
    /// LVIS v1, 1203 categories.
    Lvis,
}

impl std::str::FromStr for BuiltinVocabulary {
    type Err = VocabularyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(
            match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
                "lvvis" => Self::Lvvis,
                "ytvis19" | "ytvis2019" => Self::Ytvis19,
                "ytvis21" | "ytvis2021" => Self::Ytvis21,
                "ovis" => Self::Ovis,
                "coco" => Self::Coco,
                "lvis" => Self::Lvis,
                _ => return Err(VocabularyError::UnknownBuiltin(s.to_string())),
            },
        )
    }
}

impl BuiltinVocabulary {
    fn text(self) -> &'static str {
        match self {
            Self::Lvvis => include_str!("../data/lvvis.tsv"),
            Self::Ytvis19 => include_str!("../data/ytvis19.txt"),
            Self::Ytvis21 => include_str!("../data/ytvis21.txt"),
            Self::Ovis => include_str!("../data/ovis.txt"),
            Self::Coco => include_str!("../data/coco.txt"),
            Self::Lvis => include_str!("../data/lvis.txt"),
        }
    }
}

/// CLIP-VIS's synonym split: `", "` becomes `","`, then split on `,`.
fn reference_synonyms(name: &str) -> Vec<String> {
    name.replace(", ", ",")
        .split(',')
        .map(str::to_string)
        .collect()
}

fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

impl Vocabulary {
    /// Names as CLIP-VIS takes them from dataset metadata: used verbatim, split into synonyms
    /// on commas. Ids are 1-based positions.
    pub fn from_names<S: AsRef<str>>(names: &[S], origin: &str) -> Result<Self, VocabularyError> {
        let categories = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let name = name.as_ref();
                let synonyms = reference_synonyms(name);
                if synonyms.iter().any(|s| is_blank(s)) {
                    return Err(VocabularyError::BlankEntry {
                        origin: origin.to_string(),
                        entry: i + 1,
                        text: name.to_string(),
                    });
                }
                Ok(Category {
                    name: name.to_string(),
                    synonyms,
                    id: i as u64 + 1,
                    partition: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::checked(categories, origin)
    }

    /// A command-line list: categories separated by commas, synonyms of one category by `|`,
    /// surrounding whitespace trimmed (`"cat, dog|puppy, hard drive"`).
    pub fn from_list(list: &str) -> Result<Self, VocabularyError> {
        let origin = "--vocab";
        if is_blank(list) {
            return Err(VocabularyError::Empty {
                origin: origin.into(),
            });
        }
        let categories = list
            .split(',')
            .enumerate()
            .map(|(i, entry)| {
                let synonyms: Vec<String> =
                    entry.split('|').map(|s| s.trim().to_string()).collect();
                if synonyms.iter().any(|s| s.is_empty()) {
                    return Err(VocabularyError::BlankEntry {
                        origin: origin.into(),
                        entry: i + 1,
                        text: entry.to_string(),
                    });
                }
                Ok(Category {
                    name: synonyms.join(","),
                    synonyms,
                    id: i as u64 + 1,
                    partition: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::checked(categories, origin)
    }

    /// A vocabulary file: a dataset json (`{"categories": [{"id", "name", ...}]}`, YTVIS, LV-VIS,
    /// COCO or LVIS style; ordered by id, ids kept for the results) when it starts with `{`,
    /// else a text file with one category per line (commas inside a line separate synonyms, as
    /// in CLIP-VIS names). Trailing empty lines are ignored; a blank line in between is an error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, VocabularyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| VocabularyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if text.trim_start().starts_with('{') {
            Self::from_dataset_json(&text, path)
        } else {
            Self::from_lines(&text, &path.display().to_string())
        }
    }

    /// One category per line (see [`from_file`](Self::from_file)); a tab ends the name (the
    /// rest may hold an LV-VIS partition number).
    pub fn from_lines(text: &str, origin: &str) -> Result<Self, VocabularyError> {
        let lines: Vec<&str> = text.trim_end_matches(['\n', '\r']).lines().collect();
        let mut names = Vec::with_capacity(lines.len());
        let mut partitions = Vec::with_capacity(lines.len());
        for line in &lines {
            let line = line.trim_end_matches('\r');
            let (name, rest) = line.split_once('\t').unwrap_or((line, ""));
            names.push(name);
            partitions.push(rest.trim().parse::<u8>().ok());
        }
        if lines.is_empty() {
            return Err(VocabularyError::Empty {
                origin: origin.into(),
            });
        }
        let mut vocabulary = Self::from_names(&names, origin)?;
        for (category, partition) in vocabulary.categories.iter_mut().zip(partitions) {
            category.partition = partition;
        }
        Ok(vocabulary)
    }

    fn from_dataset_json(text: &str, path: &Path) -> Result<Self, VocabularyError> {
        #[derive(Deserialize)]
        struct Entry {
            id: u64,
            name: String,
            #[serde(default)]
            partition: Option<u8>,
        }
        #[derive(Deserialize)]
        struct Dataset {
            categories: Vec<Entry>,
        }
        let mut dataset: Dataset =
            serde_json::from_str(text).map_err(|e| VocabularyError::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        dataset.categories.sort_by_key(|c| c.id);
        let names: Vec<&str> = dataset.categories.iter().map(|c| c.name.as_str()).collect();
        let origin = path.display().to_string();
        let mut vocabulary = Self::from_names(&names, &origin)?;
        for (category, entry) in vocabulary.categories.iter_mut().zip(&dataset.categories) {
            category.id = entry.id;
            category.partition = entry.partition;
        }
        Ok(vocabulary)
    }

    /// A built-in vocabulary.
    pub fn builtin(which: BuiltinVocabulary) -> Self {
        Self::from_lines(which.text(), "built-in vocabulary")
            .expect("the built-in vocabularies are checked by tests")
    }

    fn checked(categories: Vec<Category>, origin: &str) -> Result<Self, VocabularyError> {
        if categories.is_empty() {
            return Err(VocabularyError::Empty {
                origin: origin.into(),
            });
        }
        Ok(Self { categories })
    }

    /// Number of categories.
    pub fn len(&self) -> usize {
        self.categories.len()
    }

    /// Always false: a vocabulary has at least one category.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty()
    }

    /// The synonyms of every category, in label order.
    pub fn synonyms(&self) -> Vec<Vec<String>> {
        self.categories.iter().map(|c| c.synonyms.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_the_dataset_sizes() {
        let sizes = [
            (BuiltinVocabulary::Lvvis, 1196),
            (BuiltinVocabulary::Ytvis19, 40),
            (BuiltinVocabulary::Ytvis21, 40),
            (BuiltinVocabulary::Ovis, 25),
            (BuiltinVocabulary::Coco, 80),
            (BuiltinVocabulary::Lvis, 1203),
        ];
        for (which, size) in sizes {
            let v = Vocabulary::builtin(which);
            assert_eq!(v.len(), size, "{which:?}");
            assert_eq!(v.categories.last().unwrap().id, size as u64);
        }
        let lvvis = Vocabulary::builtin(BuiltinVocabulary::Lvvis);
        assert_eq!(lvvis.categories[1].name, "action_camera");
        assert!(lvvis
            .categories
            .iter()
            .all(|c| c.partition.is_some_and(|p| p <= 3)));
        let novel = lvvis
            .categories
            .iter()
            .filter(|c| c.partition >= Some(2))
            .count();
        assert_eq!(novel, 555);
    }

    #[test]
    fn lists_split_categories_on_commas_and_synonyms_on_bars() {
        let v = Vocabulary::from_list("cat, dog|puppy ,hard drive").unwrap();
        let words: Vec<_> = v.synonyms();
        assert_eq!(
            words,
            vec![vec!["cat"], vec!["dog", "puppy"], vec!["hard drive"]]
        );
        assert_eq!(v.categories[2].id, 3);
    }

    #[test]
    fn blank_entries_are_errors_naming_the_entry() {
        assert!(matches!(
            Vocabulary::from_list("  "),
            Err(VocabularyError::Empty { .. })
        ));
        let err = Vocabulary::from_list("cat, ,dog").unwrap_err();
        assert!(
            matches!(err, VocabularyError::BlankEntry { entry: 2, .. }),
            "{err}"
        );
        let err = Vocabulary::from_lines("cat\n   \ndog\n", "v.txt").unwrap_err();
        assert!(err.to_string().contains("v.txt: entry 2"), "{err}");
        assert!(matches!(
            Vocabulary::from_lines("\n\n", "v.txt"),
            Err(VocabularyError::Empty { .. })
        ));
        let err = Vocabulary::from_names(&["a, ", "b"], "x").unwrap_err();
        assert!(matches!(err, VocabularyError::BlankEntry { entry: 1, .. }));
    }

    #[test]
    fn reference_names_split_on_commas_and_keep_underscores() {
        let v = Vocabulary::from_names(&["traffic_light", "dog, puppy"], "x").unwrap();
        assert_eq!(
            v.synonyms(),
            vec![vec!["traffic_light"], vec!["dog", "puppy"]]
        );
    }

    #[test]
    fn dataset_json_keeps_ids_and_partitions() {
        let dir = std::env::temp_dir().join(format!("clip-vis-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gt.json");
        std::fs::write(
            &path,
            r#"{"videos": [], "categories": [{"id": 7, "name": "b", "partition": 2}, {"id": 3, "name": "a"}]}"#,
        )
        .unwrap();
        let v = Vocabulary::from_file(&path).unwrap();
        assert_eq!(v.categories[0].name, "a");
        assert_eq!(
            (v.categories[1].id, v.categories[1].partition),
            (7, Some(2))
        );
        std::fs::write(&path, "{\"categories\": [").unwrap();
        let err = Vocabulary::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("gt.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
